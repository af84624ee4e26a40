// PartyKit side protocols: y-pk-batch chunked client messages and __YPS: custom messages.
//
// y-partykit 0.0.33 (dist/chunk-*.mjs, `sendChunked`): a client message over 1,000,000 bytes is
// sent as   text  `y-pk-batch#{"id":ID,"type":"start","size":TOTAL,"count":N}`
//           N binary frames of at most 1,000,000 bytes
//           text  `y-pk-batch#{"id":ID,"type":"end","size":TOTAL,"count":N}`
// The client ignores text frames it receives, so the server must answer in plain binary frames.
import assert from 'node:assert/strict'
import crypto from 'node:crypto'
import * as encoding from 'lib0/encoding'
import * as syncProtocol from 'y-protocols/sync'
import { useServer, uniqueRoom, waitFor, waitSynced, waitAllSynced, sleep, Y } from './helpers.mjs'

const ctx = useServer()

const sha = (s) => crypto.createHash('sha256').update(s).digest('hex')
const randomText = (n) => crypto.randomBytes(Math.ceil(n * 3 / 4)).toString('base64').slice(0, n)

// Records the frames a y-partykit provider sends, by wrapping its socket's send().
const recordSends = (provider) => {
  const sent = []
  const wrap = () => {
    const ws = provider.ws
    if (!ws || ws.__recorded) return
    ws.__recorded = true
    const orig = ws.send.bind(ws)
    ws.send = (data, ...rest) => {
      sent.push(typeof data === 'string' ? { text: data } : { bytes: data.byteLength })
      return orig(data, ...rest)
    }
  }
  wrap()
  provider.on('status', wrap)
  return { sent, wrap }
}

ctx.test('a 1.5 MB update sent by YPartyKitProvider (y-pk-batch chunks) arrives intact', { partylineOnly: true, timeout: 60_000 }, async (_t, clients) => {
  const room = uniqueRoom('pk-batch')
  const a = clients.pk(room)
  const b = clients.pk(room)
  await waitAllSynced([a.provider, b.provider])
  const rec = recordSends(a.provider)

  const payload = randomText(1_500_000)
  a.doc.getText('text').insert(0, payload)
  // the client really chunked it: start marker, 2 binary chunks, end marker
  const markers = rec.sent.filter((f) => f.text !== undefined && f.text.startsWith('y-pk-batch#'))
  assert.equal(markers.length, 2, `expected start+end markers, sent: ${JSON.stringify(rec.sent)}`)
  const start = JSON.parse(markers[0].text.slice('y-pk-batch#'.length))
  assert.equal(start.type, 'start')
  assert.equal(start.count, 2)

  await waitFor(() => b.doc.getText('text').length === payload.length, {
    timeout: 20_000, what: () => `1.5 MB text on B (has ${b.doc.getText('text').length})`
  })
  assert.equal(sha(b.doc.getText('text').toString()), sha(payload))
  assert.ok(a.provider.wsconnected && b.provider.wsconnected, 'both still connected')

  // later small edits still work on the same socket (the server left batch mode)
  a.doc.getMap('map').set('after', 1)
  await waitFor(() => b.doc.getMap('map').get('after') === 1, { what: 'small edit after the batch' })

  // a fresh y-websocket client on the same path gets it in its SyncStep2 (one binary frame)
  const c = clients.ws(room, { prefix: '/parties/main' })
  await waitSynced(c.provider, 20_000)
  await waitFor(() => c.doc.getText('text').length === payload.length, { timeout: 20_000, what: 'fresh client has 1.5 MB text' })
  assert.equal(sha(c.doc.getText('text').toString()), sha(payload))
})

ctx.test('a >1 MB SyncStep2 from a YPartyKitProvider joining with offline content is reassembled', { partylineOnly: true, timeout: 60_000 }, async (_t, clients) => {
  const room = uniqueRoom('pk-batch-step2')
  const doc = new Y.Doc()
  const payload = randomText(1_200_000)
  doc.getText('text').insert(0, payload)
  doc.getMap('map').set('k', 'v')
  const a = clients.pk(room, { doc }) // its reply to the server's SyncStep1 is ~1.2 MB -> chunked
  await waitSynced(a.provider, 20_000)
  const b = clients.pk(room)
  await waitSynced(b.provider, 20_000)
  await waitFor(() => b.doc.getText('text').length === payload.length, { timeout: 20_000, what: 'B has the 1.2 MB text' })
  assert.equal(sha(b.doc.getText('text').toString()), sha(payload))
  assert.equal(b.doc.getMap('map').get('k'), 'v')
})

ctx.test('a y-pk-batch whose end marker does not match its start is not applied', { partylineOnly: true, timeout: 30_000 }, async (_t, clients) => {
  const room = uniqueRoom('pk-batch-bad')
  const obs = clients.pk(room)
  await waitSynced(obs.provider)
  obs.doc.getMap('map').set('good', 1)
  await sleep(200)

  // a valid y-sync update message, cut in two chunks
  const evil = new Y.Doc()
  evil.getText('text').insert(0, 'EVIL')
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, 0)
  syncProtocol.writeUpdate(enc, Y.encodeStateAsUpdate(evil))
  const msg = encoding.toUint8Array(enc)
  const half = Math.floor(msg.length / 2)
  const raw = await clients.raw(`/parties/main/${room}?_pk=${crypto.randomUUID()}`)
  const id = 'bad1'
  raw.send(`y-pk-batch#${JSON.stringify({ id, type: 'start', size: msg.length, count: 2 })}`)
  raw.send(msg.slice(0, half))
  raw.send(msg.slice(half))
  // end marker disagrees with the start marker (size and count)
  raw.send(`y-pk-batch#${JSON.stringify({ id, type: 'end', size: msg.length + 5, count: 3 })}`)
  await sleep(500)
  assert.equal(obs.doc.getText('text').toString(), '', 'an invalid batch was applied to the room')

  // the room is unaffected: a fresh client syncs and sees only the good state
  const fresh = clients.pk(room)
  await waitSynced(fresh.provider)
  await waitFor(() => fresh.doc.getMap('map').get('good') === 1, { what: 'fresh client sees room state' })
  assert.equal(fresh.doc.getText('text').toString(), '')
  assert.ok(obs.provider.wsconnected, 'other sessions unaffected')
})

ctx.test('__YPS: custom text messages reach the other sessions of the room, not the sender', { partylineOnly: true, timeout: 30_000 }, async (_t, clients) => {
  const room = uniqueRoom('yps')
  const other = uniqueRoom('yps-other')
  const path = (r) => `/parties/main/${r}?_pk=${crypto.randomUUID()}`
  const sender = await clients.raw(path(room))
  const receiver = await clients.raw(path(room))
  const outsider = await clients.raw(path(other))
  // a stock client in the room keeps working alongside
  const pk = clients.pk(room)
  await waitSynced(pk.provider)
  await sleep(200)

  const message = `__YPS:${JSON.stringify({ type: 'cursor', who: 'sender', n: 1, unicode: 'ünï' })}`
  const before = { sender: sender.textFrames().length, outsider: outsider.textFrames().length }
  sender.send(message)
  await waitFor(() => receiver.textFrames().some((f) => f.text === message), {
    timeout: 2000, what: () => `receiver got the __YPS: message (text frames: ${JSON.stringify(receiver.textFrames().map((f) => f.text))})`
  })
  const got = receiver.textFrames().find((f) => f.text === message)
  assert.equal(got.isBinary, false, 'relayed as a text frame')
  await sleep(500)
  assert.equal(sender.textFrames().length, before.sender, `sender got its own custom message back: ${JSON.stringify(sender.textFrames().map((f) => f.text))}`)
  assert.equal(outsider.textFrames().length, before.outsider, 'a session in another room got the custom message')
  assert.equal(receiver.textFrames().filter((f) => f.text === message).length, 1, 'delivered exactly once')

  // a second message in the other direction
  const reply = '__YPS:{"type":"reply"}'
  receiver.send(reply)
  await waitFor(() => sender.textFrames().some((f) => f.text === reply), { timeout: 2000, what: 'reply reaches the first sender' })
  assert.equal(receiver.textFrames().filter((f) => f.text === reply).length, 0)

  // nobody was disconnected by the text frames
  assert.equal(sender.closed, null)
  assert.equal(receiver.closed, null)
  assert.ok(pk.provider.wsconnected)
  pk.doc.getMap('map').set('still', 'works')
  const pk2 = clients.pk(room)
  await waitFor(() => pk2.doc.getMap('map').get('still') === 'works', { what: 'doc sync unaffected by custom messages' })
})
