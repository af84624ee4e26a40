// The y-sync wire protocol as seen by a raw WebSocket: handshake, one message per frame,
// SyncStep2 for an empty doc, echo to the sender.
import assert from 'node:assert/strict'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import * as syncProtocol from 'y-protocols/sync'
import * as awarenessProtocol from 'y-protocols/awareness'
import { useServer, uniqueRoom, waitFor, waitSynced, content, sleep, Y } from './helpers.mjs'

const ctx = useServer()

// Decodes one binary frame; throws unless it holds exactly one y-protocol message.
const parseFrame = (buf) => {
  const d = decoding.createDecoder(new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength))
  const type = decoding.readVarUint(d)
  let msg
  switch (type) {
    case 0: {
      const sub = decoding.readVarUint(d)
      assert.ok(sub <= 2, `unknown sync sub-type ${sub}`)
      msg = { type, sub, payload: decoding.readVarUint8Array(d) }
      break
    }
    case 1: msg = { type, payload: decoding.readVarUint8Array(d) }; break
    case 2: msg = { type, sub: decoding.readVarUint(d), reason: decoding.readVarString(d) }; break
    case 3: msg = { type }; break
    default: throw new Error(`unknown message type ${type}`)
  }
  assert.equal(decoding.hasContent(d), false, `frame has ${buf.byteLength - d.pos} trailing bytes after one message (type ${type}): more than one message per frame?`)
  return msg
}

const syncStep1 = (doc) => {
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, 0)
  syncProtocol.writeSyncStep1(e, doc)
  return encoding.toUint8Array(e)
}
const updateMsg = (update) => {
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, 0)
  syncProtocol.writeUpdate(e, update)
  return encoding.toUint8Array(e)
}
const awarenessMsg = (awareness, ids) => {
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, 1)
  encoding.writeVarUint8Array(e, awarenessProtocol.encodeAwarenessUpdate(awareness, ids))
  return encoding.toUint8Array(e)
}

const messages = (raw) => raw.binaryFrames().map((f) => parseFrame(f.data))

ctx.test('handshake: server sends SyncStep1 first and answers SyncStep1 with SyncStep2 on an empty doc', async (_t, clients) => {
  const room = uniqueRoom('raw-empty')
  const raw = await clients.raw(`/${room}`)
  await waitFor(() => raw.binaryFrames().length >= 1, { timeout: 2000, what: 'first frame from server' })
  const first = parseFrame(raw.binaryFrames()[0].data)
  assert.equal(first.type, 0, 'first message is a sync message')
  assert.equal(first.sub, 0, 'first message is SyncStep1')
  // the server's state vector of an empty doc decodes and is empty
  assert.equal(Y.decodeStateVector(first.payload).size, 0)

  const doc = new Y.Doc()
  raw.send(syncStep1(doc))
  await waitFor(() => messages(raw).some((m) => m.type === 0 && m.sub === 1), { timeout: 2000, what: 'SyncStep2 reply for an empty doc' })
  const step2 = messages(raw).find((m) => m.type === 0 && m.sub === 1)
  Y.applyUpdate(doc, step2.payload) // must be a valid (empty) update
  assert.equal(content(doc), content(new Y.Doc()))
  assert.equal(raw.textFrames().length, 0, 'no text frames toward a plain y-websocket client')
  assert.equal(raw.closed, null)
  doc.destroy()
})

ctx.test('handshake: SyncStep2 carries the room state; server awareness snapshot on connect', async (_t, clients) => {
  const room = uniqueRoom('raw-state')
  const w = clients.ws(room)
  await waitSynced(w.provider)
  w.doc.getText('text').insert(0, 'existing content')
  w.doc.getMap('map').set('n', 42)
  w.provider.awareness.setLocalState({ user: { name: 'writer' } })
  const probe = clients.ws(room)
  await waitFor(() => probe.doc.getMap('map').get('n') === 42 && probe.provider.awareness.getStates().has(w.doc.clientID), { what: 'server has state + awareness' })

  const raw = await clients.raw(`/${room}`)
  await waitFor(() => messages(raw).some((m) => m.type === 1), { timeout: 2000, what: 'awareness snapshot right after connect' })
  const msgs = messages(raw)
  assert.equal(msgs[0].type, 0)
  assert.equal(msgs[0].sub, 0)
  // the awareness snapshot contains the writer's state
  const aw = new awarenessProtocol.Awareness(new Y.Doc())
  for (const m of msgs.filter((m) => m.type === 1)) awarenessProtocol.applyAwarenessUpdate(aw, m.payload, 'server')
  assert.deepEqual(aw.getStates().get(w.doc.clientID), { user: { name: 'writer' } })
  aw.destroy()

  // server's SyncStep1 state vector covers the writer's edits
  const sv = Y.decodeStateVector(msgs[0].payload)
  assert.equal(sv.get(w.doc.clientID), Y.decodeStateVector(Y.encodeStateVector(w.doc)).get(w.doc.clientID))

  const doc = new Y.Doc()
  raw.send(syncStep1(doc))
  await waitFor(() => messages(raw).some((m) => m.type === 0 && m.sub === 1), { timeout: 2000, what: 'SyncStep2' })
  Y.applyUpdate(doc, messages(raw).find((m) => m.type === 0 && m.sub === 1).payload)
  assert.equal(doc.getText('text').toString(), 'existing content')
  assert.equal(doc.getMap('map').get('n'), 42)
  doc.destroy()
})

ctx.test('updates and awareness are echoed to the sender too; one message per frame', { timeout: 30_000 }, async (_t, clients) => {
  const room = uniqueRoom('raw-echo')
  const raw = await clients.raw(`/${room}`)
  const peer = await clients.raw(`/${room}`)
  const doc = new Y.Doc()
  raw.send(syncStep1(doc))
  peer.send(syncStep1(new Y.Doc()))
  await waitFor(() => messages(raw).some((m) => m.type === 0 && m.sub === 1), { timeout: 2000, what: 'SyncStep2' })
  await waitFor(() => messages(peer).some((m) => m.type === 0 && m.sub === 1), { timeout: 2000, what: 'SyncStep2 (peer)' })
  const nBefore = raw.binaryFrames().length

  // 200 separate updates, sent back to back
  const updates = []
  doc.on('update', (u) => updates.push(u))
  for (let i = 0; i < 200; i++) doc.getArray('array').push([i])
  for (const u of updates) raw.send(updateMsg(u))

  const applyEchoes = (client, from) => {
    const d = new Y.Doc()
    for (const m of client.binaryFrames().slice(from).map((f) => parseFrame(f.data))) {
      if (m.type === 0 && (m.sub === 2 || m.sub === 1)) Y.applyUpdate(d, m.payload)
    }
    return d
  }
  await waitFor(() => { const d = applyEchoes(raw, nBefore); const ok = d.getArray('array').length === 200; d.destroy(); return ok }, {
    timeout: 10_000, what: 'all 200 updates echoed back to the sender'
  })
  await waitFor(() => { const d = applyEchoes(peer, 0); const ok = d.getArray('array').length === 200; d.destroy(); return ok }, {
    timeout: 10_000, what: 'all 200 updates broadcast to the peer'
  })
  const echoed = applyEchoes(raw, nBefore)
  assert.deepEqual(echoed.getArray('array').toArray(), Array.from({ length: 200 }, (_, i) => i))
  echoed.destroy()

  // awareness: set a state, the server echoes it back to the sender (and the peer)
  const aw = new awarenessProtocol.Awareness(doc)
  aw.setLocalState({ me: 'raw' })
  const nAw = raw.binaryFrames().length
  raw.send(awarenessMsg(aw, [doc.clientID]))
  const hasMyAwareness = (client, from) => {
    const tmp = new awarenessProtocol.Awareness(new Y.Doc())
    for (const m of client.binaryFrames().slice(from).map((f) => parseFrame(f.data))) {
      if (m.type === 1) awarenessProtocol.applyAwarenessUpdate(tmp, m.payload, 'server')
    }
    const ok = tmp.getStates().get(doc.clientID)?.me === 'raw'
    tmp.doc.destroy()
    return ok
  }
  await waitFor(() => hasMyAwareness(raw, nAw), { timeout: 2000, what: 'own awareness echoed to the sender' })
  await waitFor(() => hasMyAwareness(peer, 0), { timeout: 2000, what: 'awareness broadcast to the peer' })

  // a clock-only renewal (same state, higher clock) is re-broadcast as well: that echo is what keeps
  // a lone stock client's socket alive
  await sleep(100)
  const nRenew = raw.binaryFrames().length
  aw.setLocalState(aw.getLocalState()) // same content, clock + 1
  raw.send(awarenessMsg(aw, [doc.clientID]))
  await waitFor(() => raw.binaryFrames().slice(nRenew).some((f) => parseFrame(f.data).type === 1), {
    timeout: 2000, what: 'clock-only awareness renewal echoed to the sender'
  })
  aw.destroy()
  // every frame parsed as exactly one message (parseFrame asserts); nobody was closed
  messages(raw)
  messages(peer)
  assert.equal(raw.closed, null)
  assert.equal(peer.closed, null)
  doc.destroy()
})
