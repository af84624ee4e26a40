// Restarts of the server on the same data dir.
//
// Durability contract (DESIGN.md): anything a client has seen from the server (the echo/broadcast
// of an update) survives SIGTERM and kill -9. Before each restart every client is destroyed, so
// the content a new client sees can only come from the server's own storage (a live client would
// re-upload its state on reconnect and hide a loss).
import assert from 'node:assert/strict'
import { useServer, uniqueRoom, waitFor, waitSynced, waitAllSynced, content, stateVector, sleep } from './helpers.mjs'

const ctx = useServer()

// Writes `n` separate transactions into doc (text, map and array), returns nothing.
const write = (doc, tag, n) => {
  for (let i = 0; i < n; i++) {
    const k = i % 3
    if (k === 0) doc.getText('text').insert(doc.getText('text').length, `${tag}${i};`)
    else if (k === 1) doc.getMap('map').set(`${tag}${i}`, { i, tag })
    else doc.getArray('array').push([`${tag}${i}`])
  }
}

// how many array items write(doc, tag, n) pushes
const arrayItems = (n) => Math.floor(n / 3)

// Opens a fresh client on `room` and asserts it ends up with exactly `expected` (content()).
const expectRoom = async (clients, room, expected, expectedSv, label) => {
  const c = clients.ws(room)
  await waitSynced(c.provider, 20_000)
  await waitFor(() => content(c.doc) === expected, {
    timeout: 10_000,
    what: () => `${label}: room ${room} after restart\n  expected ${expected.slice(0, 300)}\n  got      ${content(c.doc).slice(0, 300)}`
  })
  if (expectedSv) assert.equal(stateVector(c.doc), expectedSv, `${label}: state vector of ${room}`)
  c.provider.destroy()
}

ctx.test('SIGTERM: a graceful restart keeps every room', { partylineOnly: true, timeout: 90_000 }, async (_t, clients) => {
  const rooms = [uniqueRoom('term-a'), uniqueRoom('term-b'), uniqueRoom('term-c')]
  const expected = {}
  for (const room of rooms) {
    const a = clients.ws(room)
    const b = clients.ws(room)
    await waitAllSynced([a.provider, b.provider])
    write(a.doc, 'a', 150)
    write(b.doc, 'b', 50)
    a.doc.getText('text').insert(0, 'x'.repeat(100_000)) // one bigger update too
    await waitFor(() => content(a.doc) === content(b.doc) && a.doc.getArray('array').length === arrayItems(150) + arrayItems(50), {
      timeout: 10_000, what: `both clients of ${room} converged`
    })
    expected[room] = { content: content(a.doc), sv: stateVector(a.doc) }
  }
  await sleep(300)
  // clients stay connected while the server shuts down; stop() asserts exit code 0
  await ctx.server.stop('SIGTERM')
  await clients.destroyAll()
  await ctx.server.start()
  for (const room of rooms) await expectRoom(clients, room, expected[room].content, expected[room].sv, 'after SIGTERM')

  // the restarted server keeps accepting writes on top of the loaded state, and a second restart
  // keeps both
  const room = rooms[0]
  const a = clients.ws(room)
  await waitSynced(a.provider)
  await waitFor(() => content(a.doc) === expected[room].content, { what: 'reloaded state' })
  const w = clients.ws(room)
  write(a.doc, 'post', 30)
  await waitFor(() => content(w.doc) === content(a.doc), { what: 'post-restart writes broadcast' })
  const after = { content: content(a.doc), sv: stateVector(a.doc) }
  await sleep(300)
  await ctx.server.stop('SIGTERM')
  await clients.destroyAll()
  await ctx.server.start()
  await expectRoom(clients, room, after.content, after.sv, 'after second SIGTERM')
})

ctx.test('SIGKILL: everything a client has received from the server survives kill -9', { partylineOnly: true, timeout: 90_000 }, async (_t, clients) => {
  const rooms = [uniqueRoom('kill-a'), uniqueRoom('kill-b')]
  const pairs = []
  for (const room of rooms) {
    const a = clients.ws(room)
    const b = clients.ws(room)
    pairs.push({ room, a, b })
  }
  await waitAllSynced(pairs.flatMap((p) => [p.a.provider, p.b.provider]))
  for (const p of pairs) {
    write(p.a.doc, 'k', 200)
    p.a.doc.getText('text').insert(0, 'y'.repeat(50_000))
  }
  // the moment the other client has received the last update, it was broadcast => must be durable
  const expected = {}
  for (const p of pairs) {
    await waitFor(() => p.b.doc.getArray('array').length === arrayItems(200) && content(p.b.doc) === content(p.a.doc), {
      timeout: 10_000, what: `B of ${p.room} received everything`
    })
    expected[p.room] = { content: content(p.b.doc), sv: stateVector(p.b.doc) }
  }
  const info = await ctx.server.stop('SIGKILL')
  assert.equal(info.signal, 'SIGKILL')
  await clients.destroyAll()
  await ctx.server.start()
  for (const p of pairs) await expectRoom(clients, p.room, expected[p.room].content, expected[p.room].sv, 'after SIGKILL')
})

ctx.test('SIGKILL right after a single small edit is echoed to its sender', { partylineOnly: true, timeout: 60_000 }, async (_t, clients) => {
  const room = uniqueRoom('kill-echo')
  const a = clients.ws(room)
  await waitSynced(a.provider)
  // observe the echo: the server sends our own update back (y-websocket 4 uses this as the ack)
  let echoed = false
  const ws = a.provider.ws
  const marker = 'echo-marker-' + Date.now()
  ws.addEventListener('message', (ev) => {
    if (typeof ev.data !== 'string' && Buffer.from(ev.data).includes(marker)) echoed = true
  })
  a.doc.getMap('map').set('m', marker)
  await waitFor(() => echoed, { timeout: 5000, what: 'server echo of the edit to its sender' })
  const expected = content(a.doc)
  await ctx.server.stop('SIGKILL')
  await clients.destroyAll()
  await ctx.server.start()
  await expectRoom(clients, room, expected, null, 'after SIGKILL of an echoed edit')
})

ctx.test('clients reconnect by themselves after a restart on the same address and keep syncing', { timeout: 60_000 }, async (_t, clients) => {
  const room = uniqueRoom('reconnect')
  const a = clients.ws(room)
  const b = clients.ws(room)
  const pk = clients.pk(room, { prefix: `/${room}` }) // y-partykit client on the plain /ROOM path
  await waitAllSynced([a.provider, b.provider, pk.provider])
  a.doc.getText('text').insert(0, 'before;')
  await waitFor(() => b.doc.getText('text').toString() === 'before;', { what: 'B has the first edit' })
  await sleep(300)

  await ctx.server.restart('SIGTERM', { samePort: true })
  // edits made while the server was down or coming back
  a.doc.getText('text').insert(a.doc.getText('text').length, 'during;')
  pk.doc.getMap('map').set('pk', 'during')
  await waitAllSynced([a.provider, b.provider, pk.provider], 20_000)
  await waitFor(() => [a, b, pk].every((c) => content(c.doc) === content(a.doc)) && b.doc.getMap('map').get('pk') === 'during', {
    timeout: 15_000, what: () => `convergence after restart: ${[a, b, pk].map((c) => content(c.doc)).join(' | ')}`
  })
  assert.equal(b.doc.getText('text').toString(), 'before;during;')
  b.doc.getMap('map').set('after', true)
  await waitFor(() => a.doc.getMap('map').get('after') === true && pk.doc.getMap('map').get('after') === true, { what: 'edits flow after reconnect' })
})
