// Supabase Auth (GoTrue) calls through supabase-js, as an app signs its users in.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createClient, AuthApiError } from '@supabase/supabase-js'

const client = () =>
  createClient(process.env.MINICLOUD_URL, process.env.MINICLOUD_ANON_KEY, {
    auth: { persistSession: false, autoRefreshToken: false },
  })
const email = `sjs-${process.pid}@example.com`
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

  await t.test('sign out', async () => {
    const { error } = await supabase.auth.signOut()
    assert.equal(error, null)
    assert.equal((await supabase.auth.getSession()).data.session, null)
  })
})
