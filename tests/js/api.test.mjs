// The gateway's HTTP API with real providers: `partyline dev --api-key`;
// a server-side update reaches connected y-websocket and y-partykit
// clients, the state reads back with real Yjs, and the served OpenAPI
// document validates.
import assert from 'node:assert/strict'
import SwaggerParser from '@apidevtools/swagger-parser'
import { Y, useServer, uniqueRoom, waitFor, waitSynced } from './helpers.mjs'

const KEY = 'js-test-api-key-0123456789'
const ctx = useServer({ extraArgs: ['--api-key', KEY] })

const api = (path, { method = 'GET', body, key = KEY, headers = {} } = {}) =>
  fetch(`${ctx.server.httpUrl}${path}`, {
    method,
    body,
    headers: { ...(key ? { Authorization: `Bearer ${key}` } : {}), ...headers }
  })

const updateWith = (fill) => {
  const doc = new Y.Doc()
  fill(doc)
  return Y.encodeStateAsUpdate(doc)
}

ctx.test('the served OpenAPI document validates', { partylineOnly: true }, async () => {
  const response = await api('/v1/openapi.json', { key: null })
  assert.equal(response.status, 200)
  const document = await response.json()
  const validated = await SwaggerParser.validate(document)
  assert.equal(validated.openapi, '3.0.3')
  assert.ok(validated.paths['/v1/rooms/{room}/update'].post)
})

ctx.test('a server-side update reaches connected clients and the state reads back', { partylineOnly: true }, async (_t, clients) => {
  const room = uniqueRoom('doc')
  const ws = clients.ws(room)
  const pk = clients.pk(room)
  await waitSynced(ws.provider)
  await waitSynced(pk.provider)
  ws.doc.getText('text').insert(0, 'typed;')
  await waitFor(() => pk.doc.getText('text').toString() === 'typed;', { what: 'client edit' })

  // The backend writes with its own Yjs doc, built on the room's state.
  const base = new Y.Doc()
  const before = await api(`/v1/rooms/${encodeURIComponent(room)}/state`)
  assert.equal(before.status, 200)
  Y.applyUpdate(base, new Uint8Array(await before.arrayBuffer()))
  assert.equal(base.getText('text').toString(), 'typed;')
  const sv = Y.encodeStateVector(base)
  base.getText('text').insert(6, 'from-server;')
  base.getMap('meta').set('owner', 'backend')
  const posted = await api(`/v1/rooms/${encodeURIComponent(room)}/update`, {
    method: 'POST',
    body: Y.encodeStateAsUpdate(base, sv),
    headers: { 'Content-Type': 'application/octet-stream' }
  })
  assert.equal(posted.status, 204, await posted.text())
  for (const client of [ws, pk]) {
    await waitFor(() => client.doc.getText('text').toString() === 'typed;from-server;' &&
      client.doc.getMap('meta').get('owner') === 'backend', { what: 'server update at a client' })
  }
  const json = await (await api(`/v1/rooms/${encodeURIComponent(room)}/state?format=json`)).json()
  assert.deepEqual(json, { text: 'typed;from-server;', meta: { owner: 'backend' } })

  const info = await (await api(`/v1/rooms/${encodeURIComponent(room)}`)).json()
  assert.equal(info.room, room)
  assert.equal(info.sessions, 2)
  assert.equal(info.loaded, true)
  assert.ok(info.doc_bytes > 0)
})

ctx.test('a garbage update is refused and changes nothing', { partylineOnly: true }, async (_t, clients) => {
  const room = uniqueRoom('doc')
  const ws = clients.ws(room)
  await waitSynced(ws.provider)
  ws.doc.getText('text').insert(0, 'kept;')
  await waitFor(async () => (await api(`/v1/rooms/${room}/state?format=json`)).status === 200, { what: 'room stored' })
  const posted = await api(`/v1/rooms/${room}/update`, { method: 'POST', body: new Uint8Array([1, 2, 3, 250, 251]) })
  assert.equal(posted.status, 400)
  assert.match((await posted.json()).error, /Yjs update/)
  const json = await (await api(`/v1/rooms/${room}/state?format=json`)).json()
  assert.deepEqual(json, { text: 'kept;' })
})

ctx.test('every route needs the API key', { partylineOnly: true }, async () => {
  const room = uniqueRoom('doc')
  const routes = [
    ['GET', '/v1/rooms'],
    ['GET', `/v1/rooms/${room}`],
    ['DELETE', `/v1/rooms/${room}`],
    ['GET', `/v1/rooms/${room}/state`],
    ['POST', `/v1/rooms/${room}/update`],
    ['POST', `/v1/rooms/${room}/warm`],
    ['POST', `/v1/rooms/${room}/restore`],
    ['GET', `/v1/rooms/${room}/versions`],
    ['POST', `/v1/rooms/${room}/versions`],
    ['GET', `/v1/rooms/${room}/versions/snapshot-1.bin`],
    ['POST', `/v1/rooms/${room}/versions/snapshot-1.bin/restore`]
  ]
  for (const [method, path] of routes) {
    const body = method === 'POST' ? updateWith((d) => d.getText('t').insert(0, 'x')) : undefined
    for (const key of [null, 'wrong-key-wrong-key-wrong']) {
      const response = await api(path, { method, body, key })
      assert.equal(response.status, 401, `${method} ${path} with key ${key}`)
    }
  }
  // Nothing was written by the refused calls.
  assert.equal((await api(`/v1/rooms/${room}`)).status, 404)
})
