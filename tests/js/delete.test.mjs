// Soft delete with real y-websocket providers against `partyline dev`:
// `DELETE /v1/rooms/{room}` closes the room's providers with 4404 (stock
// y-websocket 3 does not reconnect), keeps the data, and refuses new
// providers with 4404 until `POST /v1/rooms/{room}/restore` brings it
// back; `?purge=true` leaves nothing on disk; a second server with a 2 s
// `--delete-retention` purges a deleted room by itself.
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { useServer, uniqueRoom, waitFor, waitSynced, sleep } from './helpers.mjs'

const KEY = 'js-test-delete-api-key-0123456'
const ctx = useServer({ extraArgs: ['--api-key', KEY] })
const shortCtx = useServer({ extraArgs: ['--api-key', KEY, '--delete-retention', '2s'] })

const api = (server, route, method = 'GET') =>
  fetch(`${server.httpUrl}${route}`, { method, headers: { Authorization: `Bearer ${KEY}` } })

// The code of a provider's terminal close (one y-websocket will not
// reconnect after).
const closedWith = (provider) => new Promise((resolve) => provider.on('closed', (event) => resolve(event.code)))

// Everything under the server's data dir but the lock files.
const filesOf = (server) => {
  const found = []
  const walk = (dir) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name)
      if (entry.isDirectory()) walk(full)
      else if (!/lock$/i.test(entry.name)) found.push(path.relative(server.dataDir, full))
    }
  }
  walk(server.dataDir)
  return found
}

// A provider that should be refused: resolves with the close code.
const refused = async (clients, room) => {
  const c = clients.ws(room)
  const code = await closedWith(c.provider)
  return { c, code }
}

ctx.test('a deleted room refuses providers with 4404 until it is restored with its content', { partylineOnly: true }, async (_t, clients) => {
  const server = ctx.server
  const room = uniqueRoom('doc')
  const a = clients.ws(room)
  await waitSynced(a.provider)
  a.doc.getText('text').insert(0, 'kept through a delete')
  await waitFor(async () => (await (await api(server, `/v1/rooms/${room}/state?format=json`)).json()).text === 'kept through a delete', { what: 'the edit stored' })

  const closed = closedWith(a.provider)
  const response = await api(server, `/v1/rooms/${room}`, 'DELETE')
  assert.equal(response.status, 200)
  const deleted = await response.json()
  assert.equal(deleted.deleted, true)
  assert.equal(deleted.purged, false)
  const week = 7 * 24 * 3600 * 1000
  assert.ok(Math.abs(deleted.purge_at_unix_ms - (Date.now() + week)) < 60_000, `purge_at ${deleted.purge_at_unix_ms}`)
  assert.equal(await closed, 4404)
  await sleep(1500)
  assert.equal(a.provider.wsconnected, false, 'the closed provider reconnected')
  // With no session left on it, the gateway retires the room's stream
  // quietly (it used to warn that it was re-opening the room).
  const warned = fs.readFileSync(server.logPath, 'utf8').split('\n')
    .filter((line) => line.includes(room) && line.includes('re-opening'))
  assert.deepEqual(warned, [])

  // Meanwhile: new providers are refused, the API says it is deleted,
  // and the room is not listed.
  const { c: late, code } = await refused(clients, room)
  assert.equal(code, 4404)
  assert.equal(late.doc.getText('text').toString(), '')
  const state = await api(server, `/v1/rooms/${room}/state`)
  assert.equal(state.status, 404)
  assert.match((await state.json()).error, /deleted/)
  const listed = await (await api(server, '/v1/rooms')).json()
  assert.ok(!listed.rooms.includes(room), JSON.stringify(listed))

  // Restored: a fresh provider reads everything back.
  const restored = await api(server, `/v1/rooms/${room}/restore`, 'POST')
  assert.equal(restored.status, 200, await restored.clone().text())
  assert.deepEqual(await restored.json(), { room, restored: true })
  const back = clients.ws(room)
  await waitSynced(back.provider)
  await waitFor(() => back.doc.getText('text').toString() === 'kept through a delete', { what: 'content back' })
  // A room that is not deleted is not restored again.
  assert.equal((await api(server, `/v1/rooms/${room}/restore`, 'POST')).status, 409)
  assert.equal((await api(server, `/v1/rooms/${uniqueRoom('never')}/restore`, 'POST')).status, 404)
})

ctx.test('a purge closes the room and leaves nothing on disk', { partylineOnly: true }, async (_t, clients) => {
  const server = ctx.server
  const before = new Set(filesOf(server))
  const room = uniqueRoom('doc')
  const a = clients.ws(room)
  await waitSynced(a.provider)
  a.doc.getText('text').insert(0, 'gone for good')
  await waitFor(() => filesOf(server).some((f) => !before.has(f)), { what: 'the room on disk' })
  // Soft first, then the purge of the deleted room.
  const closed = closedWith(a.provider)
  assert.equal((await api(server, `/v1/rooms/${room}`, 'DELETE')).status, 200)
  assert.equal(await closed, 4404)
  assert.ok(filesOf(server).some((f) => f.endsWith('tombstone')), 'the deleted room is kept')
  const purged = await (await api(server, `/v1/rooms/${room}?purge=true`, 'DELETE')).json()
  assert.deepEqual(purged, { room, deleted: true, purged: true, purge_at_unix_ms: null })
  await waitFor(() => filesOf(server).every((f) => before.has(f)), { what: 'nothing left of the room' })
  assert.equal((await api(server, `/v1/rooms/${room}/restore`, 'POST')).status, 404)
  assert.equal((await api(server, `/v1/rooms/${room}`, 'DELETE')).status, 200)
  // A new provider of the purged room starts empty and is served.
  const fresh = clients.ws(room)
  await waitSynced(fresh.provider)
  assert.equal(fresh.doc.getText('text').toString(), '')
})

shortCtx.test('a deleted room is purged by itself once its retention ended', { partylineOnly: true, timeout: 30_000 }, async (_t, clients) => {
  const server = shortCtx.server
  const room = uniqueRoom('doc')
  const a = clients.ws(room)
  await waitSynced(a.provider)
  a.doc.getText('text').insert(0, 'short-lived')
  await waitFor(() => filesOf(server).length > 0, { what: 'the room on disk' })
  const closed = closedWith(a.provider)
  const deleted = await (await api(server, `/v1/rooms/${room}`, 'DELETE')).json()
  assert.equal(deleted.purged, false)
  assert.equal(await closed, 4404)
  assert.ok(filesOf(server).length > 0, 'kept during the retention')
  await waitFor(() => filesOf(server).length === 0, { timeout: 10_000, what: 'the purge after 2 s' })
  assert.equal((await api(server, `/v1/rooms/${room}/restore`, 'POST')).status, 404)
  const fresh = clients.ws(room)
  await waitSynced(fresh.provider)
  assert.equal(fresh.doc.getText('text').toString(), '')
})
