// `--allowed-origins`: a page of another origin gets 403 before the
// upgrade and from the HTTP API; an allowed origin syncs with a real
// y-websocket provider and gets CORS answers; a client that sends no
// Origin (Node, servers) is not a page and passes.
import assert from 'node:assert/strict'
import http from 'node:http'
import { WebSocket, useServer, uniqueRoom, waitSynced, waitFor, upgradeRequest } from './helpers.mjs'

const KEY = 'js-test-origins-api-key-0123'
const ctx = useServer({
  extraArgs: ['--allowed-origins', 'https://app.example.com,https://*.example.org', '--api-key', KEY]
})

// A plain HTTP request with whatever headers (fetch would not let an
// Origin be set by hand everywhere).
const request = (method, path, headers = {}) => new Promise((resolve, reject) => {
  const req = http.request({ host: ctx.server.host, port: ctx.server.port, method, path, headers }, (res) => {
    const chunks = []
    res.on('data', (c) => chunks.push(c))
    res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() }))
  })
  req.on('error', reject)
  req.end()
})

// `ws` sending the given Origin, as a browser page of it would.
const socketFrom = (origin) => class extends WebSocket {
  constructor (url, protocols) { super(url, protocols, { origin }) }
}

ctx.test('a disallowed Origin gets 403 before the upgrade; an allowed one syncs', { partylineOnly: true }, async (_t, clients) => {
  const room = uniqueRoom('doc')
  for (const origin of ['https://evil.example.com', 'https://example.org', 'http://app.example.com', 'null']) {
    const refused = await upgradeRequest(ctx.server, `/${room}`, { headers: { Origin: origin } })
    assert.equal(refused.status, 403, `${origin} was let in`)
  }
  const allowed = await upgradeRequest(ctx.server, `/${room}`, { headers: { Origin: 'https://docs.example.org' } })
  assert.equal(allowed.status, 101)
  const noOrigin = await upgradeRequest(ctx.server, `/${room}`)
  assert.equal(noOrigin.status, 101, 'a client without an Origin is no page')

  const a = clients.ws(room, { WebSocketPolyfill: socketFrom('https://app.example.com') })
  const b = clients.ws(room, { WebSocketPolyfill: socketFrom('https://team.example.org') })
  await waitSynced(a.provider)
  await waitSynced(b.provider)
  a.doc.getText('text').insert(0, 'hello')
  await waitFor(() => b.doc.getText('text').toString() === 'hello', { what: 'sync between allowed origins' })
})

ctx.test('the HTTP API refuses other origins and answers CORS for allowed ones', { partylineOnly: true }, async () => {
  const room = uniqueRoom('doc')
  const path = `/v1/rooms/${room}`
  const auth = { Authorization: `Bearer ${KEY}` }
  const refused = await request('GET', path, { ...auth, Origin: 'https://evil.example.com' })
  assert.equal(refused.status, 403)
  const preflightRefused = await request('OPTIONS', path, {
    Origin: 'https://evil.example.com', 'Access-Control-Request-Method': 'GET'
  })
  assert.equal(preflightRefused.status, 403)

  const preflight = await request('OPTIONS', path, {
    Origin: 'https://app.example.com',
    'Access-Control-Request-Method': 'POST',
    'Access-Control-Request-Headers': 'authorization, content-type'
  })
  assert.ok(preflight.status >= 200 && preflight.status < 300, `preflight answered ${preflight.status}`)
  assert.equal(preflight.headers['access-control-allow-origin'], 'https://app.example.com')
  assert.match(preflight.headers['access-control-allow-methods'], /POST/)
  assert.match(preflight.headers['access-control-allow-headers'], /authorization/i)

  // The room was never opened: the API answers (404), not the origin check.
  const allowed = await request('GET', path, { ...auth, Origin: 'https://app.example.com' })
  assert.equal(allowed.status, 404, allowed.body)
  assert.equal(allowed.headers['access-control-allow-origin'], 'https://app.example.com')
  assert.match(allowed.body, /room not found/)
  const listed = await request('GET', '/v1/openapi.json', { Origin: 'https://a.example.org' })
  assert.equal(listed.status, 200)
  assert.equal(listed.headers['access-control-allow-origin'], 'https://a.example.org')
  const server = await request('GET', path, auth)
  assert.equal(server.status, 404, 'a backend without an Origin still calls the API')
})
