// Large updates and large documents.
import assert from 'node:assert/strict'
import crypto from 'node:crypto'
import { useServer, uniqueRoom, waitFor, waitSynced, waitAllSynced, content, stateVector, Y } from './helpers.mjs'

const ctx = useServer()

// deterministic pseudo-random text that does not compress into a trivial pattern
const bigText = (n, seed) => {
  const out = []
  let x = seed >>> 0
  const alphabet = 'abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\n'
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0
    out.push(alphabet[(x >>> 16) % alphabet.length])
  }
  return out.join('')
}
const sha = (s) => crypto.createHash('sha256').update(s).digest('hex')

ctx.test('a 2 MB single update reaches the other client', { timeout: 60_000 }, async (_t, clients) => {
  const room = uniqueRoom('big-update')
  const a = clients.ws(room)
  const b = clients.ws(room)
  await waitAllSynced([a.provider, b.provider])
  const payload = bigText(2_000_000, 42)
  let updateSize = 0
  a.doc.once('update', (u) => { updateSize = u.length })
  a.doc.getText('text').insert(0, payload) // one transaction -> one update message
  assert.ok(updateSize >= 2_000_000, `update is ${updateSize} bytes`)

  await waitFor(() => b.doc.getText('text').length === payload.length, {
    timeout: 20_000, what: () => `2 MB text on B (has ${b.doc.getText('text').length} chars)`
  })
  assert.equal(sha(b.doc.getText('text').toString()), sha(payload))
  assert.equal(a.provider.wsconnected && b.provider.wsconnected, true, 'both clients still connected')

  // a small edit after the big one still flows both ways
  b.doc.getMap('map').set('after', 'big')
  await waitFor(() => a.doc.getMap('map').get('after') === 'big', { what: 'small edit after the big one' })

  // and a fresh client gets the whole thing in its SyncStep2
  const c = clients.ws(room)
  await waitSynced(c.provider, 20_000)
  await waitFor(() => c.doc.getText('text').length === payload.length, { timeout: 20_000, what: '2 MB text on a fresh client' })
  assert.equal(sha(c.doc.getText('text').toString()), sha(payload))
  assert.equal(c.doc.getMap('map').get('after'), 'big')
})

ctx.test('a doc built with 50,000 ops syncs to a fresh client', { timeout: 90_000 }, async (_t, clients) => {
  const room = uniqueRoom('many-ops')
  const docA = new Y.Doc()
  const text = docA.getText('text')
  const map = docA.getMap('map')
  const array = docA.getArray('array')
  let x = 7
  const rnd = (n) => { x = (Math.imul(x, 1103515245) + 12345) >>> 0; return (x >>> 8) % n }
  // 50,000 separate transactions: random-position inserts (no run-length merging), deletes,
  // map sets/overwrites, array pushes
  for (let i = 0; i < 50_000; i++) {
    const k = i % 10
    if (k < 5) text.insert(rnd(text.length + 1), String.fromCharCode(97 + (i % 26)))
    else if (k === 5 && text.length > 0) text.delete(rnd(text.length), 1)
    else if (k < 9) map.set(`k${rnd(5000)}`, i)
    else array.push([i])
  }
  const expected = content(docA)

  // A connects with the whole doc; its SyncStep2 answer to the server carries all 50,000 ops
  const a = clients.ws(room, { doc: docA })
  await waitSynced(a.provider, 20_000)
  const w = clients.ws(room) // live witness: the server has applied A's state
  await waitFor(() => content(w.doc) === expected, { timeout: 30_000, what: 'witness has the 50k-op doc' })

  const b = clients.ws(room)
  await waitSynced(b.provider, 30_000)
  await waitFor(() => content(b.doc) === expected, {
    timeout: 30_000, what: () => `fresh client has the 50k-op doc (text ${b.doc.getText('text').length}/${text.length})`
  })
  assert.equal(stateVector(b.doc), stateVector(docA))
  assert.equal(b.doc.getArray('array').length, 5000)
  // the delete set made it too: b's text equals A's text char for char (checked via content),
  // and fewer chars than inserts exist
  assert.ok(b.doc.getText('text').length < 25_000)
})

ctx.test('1,000 live transactions of 1 op each reach a connected client in order', { timeout: 60_000 }, async (_t, clients) => {
  const room = uniqueRoom('stream')
  const a = clients.ws(room)
  const b = clients.ws(room)
  await waitAllSynced([a.provider, b.provider])
  const arr = a.doc.getArray('array')
  for (let i = 0; i < 1000; i++) arr.push([i])
  await waitFor(() => b.doc.getArray('array').length === 1000, {
    timeout: 20_000, what: () => `B has ${b.doc.getArray('array').length}/1000 items`
  })
  assert.deepEqual(b.doc.getArray('array').toArray(), Array.from({ length: 1000 }, (_, i) => i))
})
