// Supabase Auth (GoTrue) calls through supabase-js, as an app signs its users in.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createClient, AuthApiError } from '@supabase/supabase-js'

const client = () =>
  createClient(process.env.MINICLOUD_URL, process.env.MINICLOUD_ANON_KEY, {
    auth: { persistSession: false, autoRefreshToken: false },
  })
const admin = () =>
  createClient(process.env.MINICLOUD_URL, process.env.MINICLOUD_SERVICE_KEY, {
    auth: { persistSession: false, autoRefreshToken: false },
  })
const email = `sjs-${process.pid}@example.com`

// The newest mail to `to` in auth's local outbox, read with the service key.
async function lastMail(to) {
  const response = await fetch(
    `${process.env.MINICLOUD_URL}/auth/v1/admin/mail?to=${encodeURIComponent(to)}&limit=1`,
    { headers: { authorization: `Bearer ${process.env.MINICLOUD_SERVICE_KEY}` } },
  )
  assert.equal(response.status, 200)
  const { mails } = await response.json()
  assert.equal(mails.length, 1, `no mail to ${to}`)
  return mails[0]
}
const password = 'correct horse battery'

test('auth through supabase-js', async (t) => {
  const supabase = client()

  await t.test('sign up returns a GoTrue user and a session', async () => {
    const { data, error } = await supabase.auth.signUp({ email, password })
    assert.equal(error, null)
    assert.equal(data.user.email, email)
    assert.equal(data.user.aud, 'authenticated')
    assert.equal(data.user.role, 'authenticated')
    assert.deepEqual(data.user.app_metadata, { provider: 'email', providers: ['email'] })
    assert.ok(data.session.access_token)
    assert.ok(data.session.refresh_token)
    assert.equal(data.session.token_type, 'bearer')
  })

  await t.test('sign in, get the user, update its metadata', async () => {
    const signedIn = await supabase.auth.signInWithPassword({ email, password })
    assert.equal(signedIn.error, null)
    const got = await supabase.auth.getUser()
    assert.equal(got.error, null)
    assert.equal(got.data.user.id, signedIn.data.user.id)
    // supabase-js sends PKCE fields along with the attributes.
    const updated = await supabase.auth.updateUser({ data: { nickname: 'mc' } })
    assert.equal(updated.error, null)
    assert.equal(updated.data.user.user_metadata.nickname, 'mc')
    const session = await supabase.auth.getSession()
    assert.equal(session.data.session.user.email, email)
  })

  await t.test('getClaims verifies the ES256 token against the JWKS', async () => {
    const session = (await supabase.auth.getSession()).data.session
    const { data, error } = await supabase.auth.getClaims()
    assert.equal(error, null)
    assert.equal(data.header.alg, 'ES256')
    assert.equal(data.claims.sub, session.user.id)
    assert.equal(data.claims.email, email)
    assert.equal(data.claims.role, 'authenticated')
    assert.equal(data.claims.aud, 'authenticated')
    assert.equal(data.claims.aal, 'aal1')
    assert.equal(data.claims.is_anonymous, false)
    assert.ok(data.claims.session_id)
    // A token whose payload was altered fails the client's own signature check.
    const [h, p, sig] = session.access_token.split('.')
    const payload = JSON.parse(Buffer.from(p, 'base64url'))
    payload.role = 'service'
    const forged = [h, Buffer.from(JSON.stringify(payload)).toString('base64url'), sig].join('.')
    const bad = await supabase.auth.getClaims(forged)
    assert.ok(bad.error, 'a forged token verified')
    assert.equal(bad.data, null)
  })

  await t.test('refresh rotates the tokens', async () => {
    const before = (await supabase.auth.getSession()).data.session
    const { data, error } = await supabase.auth.refreshSession()
    assert.equal(error, null)
    assert.notEqual(data.session.refresh_token, before.refresh_token)
  })

  await t.test('errors carry GoTrue codes and plain messages', async () => {
    const wrong = await client().auth.signInWithPassword({ email, password: 'wrong password!' })
    assert.ok(wrong.error instanceof AuthApiError, String(wrong.error))
    assert.equal(wrong.error.status, 400)
    assert.equal(wrong.error.code, 'invalid_credentials')
    assert.equal(wrong.error.message, 'invalid login credentials')
    const again = await client().auth.signUp({ email, password })
    assert.ok(again.error instanceof AuthApiError, String(again.error))
    assert.equal(again.error.code, 'user_already_exists')
    assert.doesNotMatch(again.error.message, /^\{/)
  })

  await t.test('anonymous sign-in, then the user adds an email', async () => {
    const anon = client()
    const { data, error } = await anon.auth.signInAnonymously({ options: { data: { theme: 'dark' } } })
    assert.equal(error, null)
    assert.equal(data.user.is_anonymous, true)
    assert.equal(data.user.email, '')
    assert.equal(data.user.user_metadata.theme, 'dark')
    const claims = await anon.auth.getClaims()
    assert.equal(claims.error, null)
    assert.equal(claims.data.claims.is_anonymous, true)
    const upgraded = await anon.auth.updateUser({ email: `anon-${process.pid}@example.com`, password })
    assert.equal(upgraded.error, null)
    assert.equal(upgraded.data.user.is_anonymous, false)
    const signedIn = await client().auth.signInWithPassword({ email: `anon-${process.pid}@example.com`, password })
    assert.equal(signedIn.error, null)
    assert.equal(signedIn.data.user.id, data.user.id)
  })

  await t.test('password recovery through the outbox and verifyOtp', async () => {
    const app = client()
    const sent = await app.auth.resetPasswordForEmail(email)
    assert.equal(sent.error, null)
    // Unknown addresses get the same answer: no account enumeration.
    const unknown = await app.auth.resetPasswordForEmail(`nobody-${process.pid}@example.com`)
    assert.equal(unknown.error, null)
    const mail = await lastMail(email)
    assert.equal(mail.subject, 'Reset your password')
    const code = mail.body.match(/code: (\d{6})/)[1]
    const wrong = await app.auth.verifyOtp({ email, token: code === '000000' ? '111111' : '000000', type: 'recovery' })
    assert.ok(wrong.error instanceof AuthApiError, String(wrong.error))
    assert.equal(wrong.error.status, 403)
    assert.equal(wrong.error.code, 'otp_expired')
    const { data, error } = await app.auth.verifyOtp({ email, token: code, type: 'recovery' })
    assert.equal(error, null)
    assert.equal(data.user.email, email)
    assert.ok(data.session.access_token)
    const changed = await app.auth.updateUser({ password: 'a brand new password' })
    assert.equal(changed.error, null)
    assert.equal((await client().auth.signInWithPassword({ email, password: 'a brand new password' })).error, null)
    // The code is spent.
    const replay = await client().auth.verifyOtp({ email, token: code, type: 'recovery' })
    assert.equal(replay.error?.code, 'otp_expired')
    await app.auth.updateUser({ password })
  })

  await t.test('email sign-in code and link token', async () => {
    const otpEmail = `otp-${process.pid}@example.com`
    const app = client()
    assert.equal((await app.auth.signInWithOtp({ email: otpEmail })).error, null)
    const code = (await lastMail(otpEmail)).body.match(/code: (\d{6})/)[1]
    const byCode = await app.auth.verifyOtp({ email: otpEmail, token: code, type: 'email' })
    assert.equal(byCode.error, null)
    assert.equal(byCode.data.user.email, otpEmail)
    assert.equal((await app.auth.signInWithOtp({ email: otpEmail })).error, null)
    const hash = (await lastMail(otpEmail)).body.match(/"token_hash": "([^"]+)"/)[1]
    const byLink = await client().auth.verifyOtp({ token_hash: hash, type: 'magiclink' })
    assert.equal(byLink.error, null)
    assert.equal(byLink.data.user.id, byCode.data.user.id)
  })

  await t.test('admin: create, list and delete users with the service key', async () => {
    const auth = admin().auth.admin
    const created = await auth.createUser({
      email: `admin-made-${process.pid}@example.com`,
      password,
      email_confirm: true,
      user_metadata: { plan: 'pro' },
    })
    assert.equal(created.error, null)
    assert.equal(created.data.user.user_metadata.plan, 'pro')
    const listed = await auth.listUsers({ page: 1, perPage: 1000 })
    assert.equal(listed.error, null)
    assert.ok(listed.data.users.some((u) => u.id === created.data.user.id))
    assert.ok(listed.data.total >= listed.data.users.length)
    const deleted = await auth.deleteUser(created.data.user.id)
    assert.equal(deleted.error, null)
    const again = await auth.listUsers({ page: 1, perPage: 1000 })
    assert.ok(!again.data.users.some((u) => u.id === created.data.user.id))
    // The anon key is no admin.
    const denied = await client().auth.admin.listUsers()
    assert.equal(denied.error?.status, 403)
  })

  await t.test('sign out', async () => {
    const { error } = await supabase.auth.signOut()
    assert.equal(error, null)
    assert.equal((await supabase.auth.getSession()).data.session, null)
  })
})
