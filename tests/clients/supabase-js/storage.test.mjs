// Supabase Storage calls through the official supabase-js client, as an app makes
// them. Run by tests/it/supabase_clients.rs against a fresh test cloud:
// MINICLOUD_URL is its gateway, MINICLOUD_ANON_KEY and MINICLOUD_SERVICE_KEY its keys.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createClient } from '@supabase/supabase-js'

const url = process.env.MINICLOUD_URL
const service = createClient(url, process.env.MINICLOUD_SERVICE_KEY, {
  auth: { persistSession: false, autoRefreshToken: false },
})
const bucket = `sjs-${process.pid}`

/** `n` bytes that are not all alike, so a shifted or wrapped copy cannot pass. */
function bytes(n) {
  const out = new Uint8Array(n)
  for (let i = 0; i < n; i++) out[i] = (i * 31 + (i >> 8)) & 0xff
  return out
}

async function downloaded(path) {
  const { data, error } = await service.storage.from(bucket).download(path)
  assert.equal(error, null)
  return new Uint8Array(await data.arrayBuffer())
}

test('buckets and objects through supabase-js', async (t) => {
  await t.test('create, get and list a public bucket', async () => {
    const created = await service.storage.createBucket(bucket, { public: true })
    assert.equal(created.error, null)
    const got = await service.storage.getBucket(bucket)
    assert.equal(got.error, null)
    assert.equal(got.data.name, bucket)
    assert.equal(got.data.public, true)
    const listed = await service.storage.listBuckets()
    assert.equal(listed.error, null)
    assert.ok(listed.data.some((b) => b.name === bucket))
  })

  await t.test('updateBucket limits size and types; refusals are StorageApiErrors', async () => {
    const updated = await service.storage.updateBucket(bucket, {
      public: true,
      fileSizeLimit: '1mb',
      allowedMimeTypes: ['image/png', 'text/plain', 'application/octet-stream', 'application/pdf'],
    })
    assert.equal(updated.error, null)
    const got = await service.storage.getBucket(bucket)
    assert.equal(got.data.file_size_limit, 1024 * 1024)
    assert.equal(got.data.owner, '')
    const files = service.storage.from(bucket)
    const tooBig = await files.upload('big.png', new Blob([bytes(1024 * 1024 + 1)], { type: 'image/png' }))
    assert.equal(tooBig.error.status, 413)
    assert.equal(tooBig.error.statusCode, '413')
    const wrongType = await files.upload('page.html', Buffer.from('<p>'), { contentType: 'text/html' })
    assert.equal(wrongType.error.status, 415)
    assert.match(wrongType.error.message, /not allowed/)
    assert.doesNotMatch(wrongType.error.message, /^\{/)
  })

  await t.test('a Buffer upload downloads as sent', async () => {
    const { data, error } = await service.storage
      .from(bucket)
      .upload('docs/hello.txt', Buffer.from('hello from supabase-js'), { contentType: 'text/plain' })
    assert.equal(error, null)
    assert.equal(data.path, 'docs/hello.txt')
    assert.equal(new TextDecoder().decode(await downloaded('docs/hello.txt')), 'hello from supabase-js')
    // supabase-js's default cacheControl ('3600'), sent as a header on raw uploads.
    const info = await service.storage.from(bucket).info('docs/hello.txt')
    assert.equal(info.data.cacheControl, 'max-age=3600')
  })

  await t.test('a Blob upload (sent as a form) stores the file, byte for byte', async () => {
    const sent = bytes(100_000)
    const { error } = await service.storage
      .from(bucket)
      .upload('images/blob.png', new Blob([sent], { type: 'image/png' }), { cacheControl: '120' })
    assert.equal(error, null)
    assert.deepEqual(await downloaded('images/blob.png'), sent)
    const info = await service.storage.from(bucket).info('images/blob.png')
    assert.equal(info.error, null)
    assert.equal(info.data.size, sent.length)
    assert.equal(info.data.contentType, 'image/png')
    assert.equal(info.data.cacheControl, 'max-age=120')
  })

  await t.test('a File upload with upsert replaces the object', async () => {
    const first = new File([bytes(10)], 'a.bin', { type: 'application/octet-stream' })
    const again = new File([bytes(20)], 'a.bin', { type: 'application/octet-stream' })
    const one = await service.storage.from(bucket).upload('files/a.bin', first)
    assert.equal(one.error, null)
    const refused = await service.storage.from(bucket).upload('files/a.bin', again)
    assert.notEqual(refused.error, null, 'a second upload without upsert must fail')
    assert.equal(refused.error.status, 409)
    const two = await service.storage.from(bucket).upload('files/a.bin', again, { upsert: true })
    assert.equal(two.error, null)
    assert.deepEqual(await downloaded('files/a.bin'), bytes(20))
  })

  await t.test('list pages a folder by offset, sorts and searches', async () => {
    const files = service.storage.from(bucket)
    const top = await files.list()
    assert.equal(top.error, null)
    assert.deepEqual(top.data.map((e) => [e.name, e.id]), [
      ['docs', null],
      ['files', null],
      ['images', null],
    ])
    const images = await files.list('images')
    assert.equal(images.error, null)
    assert.equal(images.data.length, 1)
    assert.equal(images.data[0].name, 'blob.png')
    assert.equal(typeof images.data[0].id, 'string')
    assert.equal(images.data[0].metadata.size, 100_000)
    assert.equal(images.data[0].metadata.mimetype, 'image/png')
    assert.equal(images.data[0].metadata.cacheControl, 'max-age=120')
    const second = await files.list('', { limit: 1, offset: 1 })
    assert.deepEqual(second.data.map((e) => e.name), ['files'])
    const searched = await files.list('', { search: 'IM' })
    assert.deepEqual(searched.data.map((e) => e.name), ['images'])
    const backwards = await files.list('', { sortBy: { column: 'name', order: 'desc' } })
    assert.deepEqual(backwards.data.map((e) => e.name), ['images', 'files', 'docs'])
    const bad = await files.list('', { sortBy: { column: 'size', order: 'asc' } })
    assert.equal(bad.error.status, 400)
  })

  await t.test('the public URL serves the bytes without a token', async () => {
    const { data } = service.storage.from(bucket).getPublicUrl('images/blob.png')
    const response = await fetch(data.publicUrl)
    assert.equal(response.status, 200)
    // The cacheControl of the upload, as is on a public URL...
    assert.equal(response.headers.get('cache-control'), 'max-age=120')
    assert.deepEqual(new Uint8Array(await response.arrayBuffer()), bytes(100_000))
    // ...and private to the caller through a token.
    const own = await fetch(`${url}/storage/v1/object/${bucket}/images/blob.png`, {
      headers: { authorization: `Bearer ${process.env.MINICLOUD_SERVICE_KEY}` },
    })
    assert.equal(own.headers.get('cache-control'), 'private, max-age=120')
    await own.arrayBuffer()
  })

  await t.test('a signed URL downloads without a token', async () => {
    const { data, error } = await service.storage.from(bucket).createSignedUrl('images/blob.png', 60)
    assert.equal(error, null)
    const response = await fetch(data.signedUrl)
    assert.equal(response.status, 200)
    assert.deepEqual(new Uint8Array(await response.arrayBuffer()), bytes(100_000))
  })

  await t.test('createSignedUrls signs several paths, one failure each its own', async () => {
    const { data, error } = await service.storage
      .from(bucket)
      .createSignedUrls(['images/blob.png', 'no/such.png'], 60)
    assert.equal(error, null)
    assert.equal(data.length, 2)
    const response = await fetch(data[0].signedUrl)
    assert.deepEqual(new Uint8Array(await response.arrayBuffer()), bytes(100_000))
    assert.equal(data[1].signedUrl, null)
    assert.ok(data[1].error)
  })

  await t.test('a signed upload URL takes a Blob from someone without a key', async () => {
    const signed = await service.storage.from(bucket).createSignedUploadUrl('uploads/signed.bin')
    assert.equal(signed.error, null)
    assert.ok(signed.data.token)
    const stranger = createClient(url, process.env.MINICLOUD_ANON_KEY, {
      auth: { persistSession: false, autoRefreshToken: false },
    })
    const sent = bytes(5_000)
    const uploaded = await stranger.storage
      .from(bucket)
      .uploadToSignedUrl('uploads/signed.bin', signed.data.token, new Blob([sent], { type: 'application/pdf' }))
    assert.equal(uploaded.error, null)
    assert.deepEqual(await downloaded('uploads/signed.bin'), sent)
  })

  await t.test('copy, move, exists and remove', async () => {
    const files = service.storage.from(bucket)
    assert.equal((await files.copy('docs/hello.txt', 'docs/copy.txt')).error, null)
    assert.equal((await files.move('docs/copy.txt', 'docs/moved.txt')).error, null)
    assert.equal((await files.exists('docs/moved.txt')).data, true)
    assert.equal((await files.exists('docs/copy.txt')).data, false)
    const removed = await files.remove(['docs/moved.txt'])
    assert.equal(removed.error, null)
    assert.equal((await files.exists('docs/moved.txt')).data, false)
  })

  await t.test('empty and delete the bucket', async () => {
    assert.equal((await service.storage.emptyBucket(bucket)).error, null)
    assert.equal((await service.storage.deleteBucket(bucket)).error, null)
    const gone = await service.storage.getBucket(bucket)
    assert.notEqual(gone.error, null)
  })
})
