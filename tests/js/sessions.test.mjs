// Live sessions through the HTTP API with real providers, against
// `partyline dev` with webhook auth answered here: the list names each
// session's user and access; closing a user's sessions ends exactly
// those (4401, and y-websocket stays closed) while others keep syncing;
// a recheck asks the webhook again for every session, turns a user now
// granted read only into a reader (their next edit reaches nobody) and
// closes one now refused. Closing sessions is not revoking: a y-partykit
// provider reconnects after any close, and is let in if the authorizer
// still says so.
import assert from 'node:assert/strict'
import http from 'node:http'
import { after } from 'node:test'
import { useServer, uniqueRoom, waitFor, waitSynced, sleep } from './helpers.mjs'

const KEY = 'js-test-sessions-api-key-01234'
// What the webhook answers now, by token: [access, user id] or null (403).
const grants = new Map()
const receiver = http.createServer((req, res) => {
  const chunks = []
  req.on('data', (c) => chunks.push(c))
  req.on('end', () => {
    const { token } = JSON.parse(Buffer.concat(chunks).toString())
    const grant = grants.get(token)
    res.writeHead(grant ? 200 : 403, { 'content-type': 'application/json' })
    res.end(JSON.stringify(grant ? { access: grant[0], user: { id: grant[1] } } : {}))
  })
})
await new Promise((resolve) => receiver.listen(0, '127.0.0.1', resolve))
// Keep-alive connections from partyline would hold close() open.
after(() => new Promise((resolve) => { receiver.close(resolve); receiver.closeAllConnections() }))

const ctx = useServer({
  extraArgs: [
    '--auth-mode', 'webhook', '--webhook-url', `http://127.0.0.1:${receiver.address().port}/auth`,
    '--api-key', KEY
  ]
})

const api = async (path, method = 'GET') => {
  const response = await fetch(`${ctx.server.httpUrl}${path}`, { method, headers: { Authorization: `Bearer ${KEY}` } })
  return { status: response.status, body: await response.json() }
}

// A provider of `user` with write or read access (a token of its own).
const join = (clients, room, user, access, kind = 'ws') => {
  const token = `${user}-${access}-${Math.random()}`
  grants.set(token, [access, user])
  const c = clients[kind](room, { params: { token } })
  c.token = token
  // Both providers emit this for every close (y-partykit reconnects after
  // any; y-websocket 3 stops after a 44xx code).
  c.closedWith = new Promise((resolve) => c.provider.on('connection-close', (event) => {
    if (event) resolve(event.code)
  }))
  return c
}

const text = (c) => c.doc.getText('text').toString()

ctx.test('the sessions list names each user, access and gateway', { partylineOnly: true }, async (_t, clients) => {
  const room = uniqueRoom('doc')
  const alice = join(clients, room, 'alice', 'write')
  const bob = join(clients, room, 'bob', 'read', 'pk')
  await waitSynced(alice.provider)
  await waitSynced(bob.provider)
  const { status, body } = await api(`/v1/rooms/${room}/sessions`)
  assert.equal(status, 200)
  const byUser = Object.fromEntries(body.sessions.map((s) => [s.user, s]))
  assert.deepEqual(Object.keys(byUser).sort(), ['alice', 'bob'])
  assert.equal(byUser.alice.access, 'write')
  assert.equal(byUser.bob.access, 'read')
  assert.equal(byUser.alice.gateway, 'dev')
  assert.notEqual(byUser.alice.id, byUser.bob.id)
  assert.ok(Math.abs(byUser.alice.connected_unix_ms - Date.now()) < 60_000)
  // A room nobody has open has no sessions (and is not loaded to say so).
  assert.deepEqual((await api(`/v1/rooms/${uniqueRoom('empty')}/sessions`)).body.sessions, [])
})

ctx.test('closing a user\'s sessions ends exactly theirs with 4401; the others keep syncing', { partylineOnly: true }, async (_t, clients) => {
  const room = uniqueRoom('doc')
  const alice1 = join(clients, room, 'alice', 'write')
  const alice2 = join(clients, room, 'alice', 'write', 'pk')
  const bob = join(clients, room, 'bob', 'write')
  const carol = join(clients, room, 'carol', 'write', 'pk')
  for (const c of [alice1, alice2, bob, carol]) await waitSynced(c.provider)
  // The app revokes alice in its own records (the y-partykit provider
  // comes back and asks), then closes her open sessions.
  grants.delete(alice1.token)
  grants.delete(alice2.token)
  const { status, body } = await api(`/v1/rooms/${room}/sessions?user=alice`, 'DELETE')
  assert.equal(status, 200)
  assert.equal(body.closed, 2)
  assert.equal(await alice1.closedWith, 4401)
  assert.equal(await alice2.closedWith, 4401)
  bob.doc.getText('text').insert(0, 'after the kick;')
  await waitFor(() => text(carol) === 'after the kick;', { what: 'bob and carol still syncing' })
  await sleep(500)
  assert.equal(alice1.provider.wsconnected, false, 'a kicked provider reconnected')
  const users = (await api(`/v1/rooms/${room}/sessions`)).body.sessions.map((s) => s.user).sort()
  assert.deepEqual(users, ['bob', 'carol'])
  assert.equal((await api(`/v1/rooms/${room}/sessions?user=`, 'DELETE')).status, 400)
})

ctx.test('a recheck downgrades one user to read-only and revokes another', { partylineOnly: true }, async (_t, clients) => {
  const room = uniqueRoom('doc')
  const alice = join(clients, room, 'alice', 'write')
  const bob = join(clients, room, 'bob', 'write', 'pk')
  const carol = join(clients, room, 'carol', 'write')
  for (const c of [alice, bob, carol]) await waitSynced(c.provider)
  alice.doc.getText('text').insert(0, 'before;')
  await waitFor(() => text(carol) === 'before;', { what: 'alice writing before the recheck' })

  grants.set(alice.token, ['read', 'alice'])
  grants.delete(bob.token)
  const { status, body } = await api(`/v1/rooms/${room}/sessions/recheck`, 'POST')
  assert.equal(status, 202)
  assert.equal(body.rechecking, 3)
  assert.equal(await bob.closedWith, 4401)
  await waitFor(async () => {
    const sessions = (await api(`/v1/rooms/${room}/sessions`)).body.sessions
    return sessions.find((s) => s.user === 'alice')?.access === 'read'
  }, { what: 'alice listed as read-only' })

  // Alice's next edit is refused and reaches nobody; carol still writes.
  alice.doc.getText('text').insert(0, 'refused;')
  carol.doc.getText('text').insert(text(carol).length, 'carol;')
  await waitFor(() => text(alice).endsWith('carol;'), { what: 'carol\'s edit at alice' })
  await sleep(700)
  assert.equal(text(carol), 'before;carol;')
  const late = join(clients, room, 'dave', 'read')
  await waitSynced(late.provider)
  assert.equal(text(late), 'before;carol;')
  assert.equal(alice.provider.wsconnected, true, 'a downgraded session stays open')
})
