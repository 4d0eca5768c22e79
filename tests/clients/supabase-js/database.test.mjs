// The PostgREST view of docdb collections through supabase-js's `from()`: a todo
// app with two users whose rows an owner policy keeps apart. Run by
// tests/it/supabase_clients.rs, which creates the collection `todos` with that
// policy first.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createClient } from '@supabase/supabase-js'

const url = process.env.MINICLOUD_URL
const password = 'correct horse battery'

async function signedIn(name) {
  const client = createClient(url, process.env.MINICLOUD_ANON_KEY, {
    auth: { persistSession: false, autoRefreshToken: false },
  })
  const { data, error } = await client.auth.signUp({ email: `${name}-db-${process.pid}@example.com`, password })
  assert.equal(error, null)
  return { client, id: data.user.id }
}

test('a todo app through from()', async (t) => {
  const alice = await signedIn('alice')
  const bob = await signedIn('bob')
  const todos = (who) => who.client.from('todos')

  await t.test('insert one and many, with and without return=representation', async () => {
    const one = await todos(alice).insert({ task: 'buy milk', done: false, priority: 2 }).select()
    assert.equal(one.error, null)
    assert.equal(one.status, 201)
    assert.equal(one.data.length, 1)
    assert.equal(one.data[0].task, 'buy milk')
    assert.equal(typeof one.data[0].id, 'string')
    const many = await todos(alice).insert([
      { id: 'a-walk', task: 'walk the dog', done: true, priority: 1 },
      { id: 'a-taxes', task: 'file taxes', done: false, priority: 3, tags: ['home', 'money'] },
      { id: 'a-call', task: 'call mum', done: false },
    ])
    assert.equal(many.error, null)
    assert.equal(many.status, 201)
    assert.equal(many.data, null, 'return=minimal answers no rows')
    const bobs = await todos(bob).insert({ id: 'b-gym', task: 'gym', done: false, priority: 5 }).select('id, task')
    assert.equal(bobs.error, null)
    assert.deepEqual(bobs.data, [{ id: 'b-gym', task: 'gym' }])
  })

  await t.test('each user sees only their own rows', async () => {
    const mine = await todos(alice).select('*', { count: 'exact' })
    assert.equal(mine.error, null)
    assert.equal(mine.data.length, 4)
    assert.equal(mine.count, 4)
    assert.ok(mine.data.every((row) => row.id !== 'b-gym'))
    const theirs = await todos(bob).select('*')
    assert.deepEqual(theirs.data.map((r) => r.id), ['b-gym'])
    // Another user's row by id: no row, not an error.
    const peek = await todos(bob).select('*').eq('id', 'a-taxes')
    assert.equal(peek.error, null)
    assert.deepEqual(peek.data, [])
  })

  await t.test('filters, order, range and single', async () => {
    const open = await todos(alice).select('task').eq('done', false).order('priority', { ascending: false })
    assert.equal(open.error, null)
    // Postgres puts NULLs first in descending order: the todo without a priority leads.
    assert.deepEqual(open.data.map((r) => r.task), ['call mum', 'file taxes', 'buy milk'])
    const range = await todos(alice).select('id').order('id').range(1, 2)
    assert.deepEqual(range.data.map((r) => r.id).length, 2)
    const gte = await todos(alice).select('id').gte('priority', 2).lt('priority', 3)
    assert.equal(gte.data.length, 1)
    const like = await todos(alice).select('task').ilike('task', '%TAX%')
    assert.deepEqual(like.data, [{ task: 'file taxes' }])
    const inList = await todos(alice).select('id').in('id', ['a-walk', 'a-call', 'b-gym']).order('id')
    assert.deepEqual(inList.data.map((r) => r.id), ['a-call', 'a-walk'])
    const nulls = await todos(alice).select('id').is('priority', null)
    assert.deepEqual(nulls.data, [{ id: 'a-call' }])
    const either = await todos(alice).select('id').or('priority.gt.2,done.is.true').order('id')
    assert.deepEqual(either.data.map((r) => r.id), ['a-taxes', 'a-walk'])
    const not = await todos(alice).select('id').not('done', 'eq', true).neq('id', 'a-call')
    assert.equal(not.data.length, 2)
    const tagged = await todos(alice).select('id').contains('tags', ['money'])
    assert.deepEqual(tagged.data, [{ id: 'a-taxes' }])
    const one = await todos(alice).select('task').eq('id', 'a-walk').single()
    assert.equal(one.error, null)
    assert.deepEqual(one.data, { task: 'walk the dog' })
    const none = await todos(alice).select('*').eq('id', 'b-gym').single()
    assert.equal(none.error.code, 'PGRST116')
    assert.equal(none.status, 406)
    const maybe = await todos(alice).select('*').eq('id', 'nothing').maybeSingle()
    assert.equal(maybe.error, null)
    assert.equal(maybe.data, null)
    const head = await todos(alice).select('*', { count: 'exact', head: true }).eq('done', false)
    assert.equal(head.error, null)
    assert.equal(head.count, 3)
  })

  await t.test('update, upsert and delete stay within the owner', async () => {
    const updated = await todos(alice).update({ done: true }).eq('id', 'a-call').select()
    assert.equal(updated.error, null)
    assert.equal(updated.data[0].done, true)
    assert.equal(updated.data[0].task, 'call mum', 'columns not named are kept')
    // Bob's update of Alice's row matches nothing.
    const sneaky = await todos(bob).update({ task: 'hacked' }).eq('id', 'a-call').select()
    assert.equal(sneaky.error, null)
    assert.deepEqual(sneaky.data, [])
    const upserted = await todos(alice)
      .upsert([{ id: 'a-walk', done: false }, { id: 'a-new', task: 'new one', done: false }])
      .select()
    assert.equal(upserted.error, null)
    const walk = upserted.data.find((r) => r.id === 'a-walk')
    assert.equal(walk.done, false)
    assert.equal(walk.task, 'walk the dog', 'an upsert merges the columns it names')
    // Bob cannot upsert over Alice's row.
    const takeover = await todos(bob).upsert({ id: 'a-walk', task: 'mine now' })
    assert.notEqual(takeover.error, null)
    assert.equal(takeover.error.code, '42501')
    const deleted = await todos(alice).delete().eq('done', true).select('id')
    assert.equal(deleted.error, null)
    assert.deepEqual(deleted.data.map((r) => r.id), ['a-call'])
    assert.equal((await todos(bob).select('id')).data.length, 1, "Bob's rows are untouched")
  })

  await t.test("errors are PostgREST's", async () => {
    const duplicate = await todos(alice).insert({ id: 'a-new', task: 'again' })
    assert.equal(duplicate.error.code, '23505')
    assert.equal(duplicate.status, 409)
    const missing = await alice.client.from('no_such_table').select('*')
    assert.equal(missing.error.code, 'PGRST205')
    assert.equal(missing.status, 404)
    const embed = await todos(alice).select('*, owner(*)')
    assert.equal(embed.error.code, 'PGRST100')
    assert.match(embed.error.message, /embedding/)
    const fts = await todos(alice).select('*').textSearch('task', 'milk')
    assert.equal(fts.error.code, 'PGRST100')
    const rpc = await alice.client.rpc('do_things')
    assert.equal(rpc.error.code, 'PGRST202')
    const anon = createClient(url, process.env.MINICLOUD_ANON_KEY, { auth: { persistSession: false } })
    const denied = await anon.from('todos').insert({ task: 'spam' })
    assert.equal(denied.error.code, '42501')
  })
})
