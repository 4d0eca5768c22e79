// `supabase.functions.invoke`, as an app calls an Edge Function. The function
// `sjs-echo` (deployed by tests/it/supabase_clients.rs) answers HTTP-style with what
// it got, answers a plain payload when sent `x-plain`, and fails when sent `x-fail`.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createClient, FunctionsHttpError } from '@supabase/supabase-js'

const anon = createClient(process.env.MINICLOUD_URL, process.env.MINICLOUD_ANON_KEY, {
  auth: { persistSession: false, autoRefreshToken: false },
})
const service = createClient(process.env.MINICLOUD_URL, process.env.MINICLOUD_SERVICE_KEY, {
  auth: { persistSession: false, autoRefreshToken: false },
})

test('functions.invoke through supabase-js', async (t) => {
  await t.test('a JSON body reaches the function and its HTTP answer comes back', async () => {
    const { data, error } = await service.functions.invoke('sjs-echo', {
      body: { name: 'minicloud', n: 3 },
    })
    assert.equal(error, null)
    assert.deepEqual(data, { got: { name: 'minicloud', n: 3 }, method: 'POST', authorized: true })
  })

  await t.test('a plain payload is answered as JSON', async () => {
    const { data, error } = await service.functions.invoke('sjs-echo', {
      headers: { 'x-plain': 'yes' },
    })
    assert.equal(error, null)
    assert.deepEqual(data, { plain: true })
  })

  await t.test('a failing function is a FunctionsHttpError with its status', async () => {
    const { data, error } = await service.functions.invoke('sjs-echo', {
      headers: { 'x-fail': 'yes' },
    })
    assert.equal(data, null)
    assert.ok(error instanceof FunctionsHttpError, String(error))
    assert.equal(error.context.status, 500)
    const body = await error.context.json()
    assert.match(JSON.stringify(body), /asked to fail/)
  })

  await t.test('the anon key may not invoke what its role is not allowed to', async () => {
    const { error } = await anon.functions.invoke('sjs-echo', { body: {} })
    assert.ok(error instanceof FunctionsHttpError, String(error))
    assert.equal(error.context.status, 403)
  })

  await t.test('an unknown function is a 404', async () => {
    const { error } = await service.functions.invoke('no-such-function', { body: {} })
    assert.ok(error instanceof FunctionsHttpError, String(error))
    assert.equal(error.context.status, 404)
  })
})
