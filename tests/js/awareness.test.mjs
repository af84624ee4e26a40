// Awareness: propagation, snapshot for late joiners, removal on disconnect (polite and abrupt).
import assert from 'node:assert/strict'
import { useServer, uniqueRoom, waitFor, waitAllSynced, sleep } from './helpers.mjs'

const ctx = useServer()

const remoteState = (provider, clientID) => provider.awareness.getStates().get(clientID)

ctx.test('awareness appears within 1 s and is removed within 3 s after the client is destroyed', async (_t, clients) => {
  const room = uniqueRoom('aw')
  const a = clients.ws(room)
  const b = clients.ws(room)
  await waitAllSynced([a.provider, b.provider])
  const idA = a.doc.clientID

  const state = { user: { name: 'alice', color: '#ff0000' }, cursor: { anchor: 3, head: 7 } }
  const t0 = Date.now()
  a.provider.awareness.setLocalState(state)
  await waitFor(() => remoteState(b.provider, idA)?.user?.name === 'alice', { timeout: 1000, what: "A's awareness on B within 1 s" })
  assert.deepEqual(remoteState(b.provider, idA), state)
  const seenAfter = Date.now() - t0

  // a field update propagates too
  a.provider.awareness.setLocalStateField('cursor', { anchor: 10, head: 10 })
  await waitFor(() => remoteState(b.provider, idA)?.cursor?.anchor === 10, { timeout: 1000, what: 'awareness field update on B' })

  // a late joiner gets the current awareness states in the handshake
  const c = clients.ws(room)
  await waitFor(() => remoteState(c.provider, idA)?.cursor?.anchor === 10, { timeout: 2000, what: "late joiner sees A's awareness" })

  const t1 = Date.now()
  a.provider.destroy()
  await waitFor(() => !b.provider.awareness.getStates().has(idA), { timeout: 3000, what: "A's awareness removed from B within 3 s" })
  await waitFor(() => !c.provider.awareness.getStates().has(idA), { timeout: 3000, what: "A's awareness removed from C within 3 s" })
  const removedAfter = Date.now() - t1

  // a client joining after A left must not get A's state
  const d = clients.ws(room)
  await waitAllSynced([d.provider])
  await sleep(300)
  assert.equal(d.provider.awareness.getStates().has(idA), false, 'stale awareness of a departed client served to a new joiner')
  assert.ok(seenAfter <= 1000 && removedAfter <= 3000)
})

ctx.test('awareness of a client whose socket drops without a goodbye is removed within 3 s', async (_t, clients) => {
  const room = uniqueRoom('aw-drop')
  const a = clients.ws(room)
  const b = clients.ws(room)
  await waitAllSynced([a.provider, b.provider])
  const idA = a.doc.clientID
  a.provider.awareness.setLocalState({ user: { name: 'dropper' } })
  await waitFor(() => remoteState(b.provider, idA)?.user?.name === 'dropper', { timeout: 1000, what: "A's awareness on B" })

  // Abrupt loss: no awareness-null message, no close frame. The server has to notice the closed
  // TCP connection and remove the states that session controlled (awareness never expires by age
  // on the server; B's own 30 s outdated timeout is far beyond the 3 s allowed here).
  a.provider.shouldConnect = false
  a.provider.ws.terminate()
  await waitFor(() => !b.provider.awareness.getStates().has(idA), { timeout: 3000, what: "dropped client's awareness removed from B within 3 s" })
  assert.equal(b.provider.wsconnected, true, 'B stays connected')
})

ctx.test('y-partykit and y-websocket clients see each other\'s awareness on /parties/main/ROOM', async (_t, clients) => {
  const room = uniqueRoom('aw-pk')
  const a = clients.pk(room)
  const b = clients.ws(room, { prefix: '/parties/main' })
  await waitAllSynced([a.provider, b.provider])
  a.provider.awareness.setLocalState({ user: { name: 'pk' } })
  b.provider.awareness.setLocalState({ user: { name: 'yws' } })
  await waitFor(() => remoteState(b.provider, a.doc.clientID)?.user?.name === 'pk', { timeout: 1000, what: 'pk awareness on ws client' })
  await waitFor(() => remoteState(a.provider, b.doc.clientID)?.user?.name === 'yws', { timeout: 1000, what: 'ws awareness on pk client' })
  a.provider.destroy()
  await waitFor(() => !b.provider.awareness.getStates().has(a.doc.clientID), { timeout: 3000, what: 'pk awareness removed' })
})
