// Outgoing webhooks against a receiver in this process, with real
// providers: the auth webhook sees the request (forwarded headers, client
// address, path), every request is signed the Standard Webhooks way and
// verified here with the `standardwebhooks` npm library, a webhook's
// `expires_at` closes the session with 4401 on time (and y-websocket does
// not reconnect), `--callback-format binary` with a bearer header
// reaches a receiver that checks both, and lifecycle events of a real
// provider's session arrive signed, in order.
import assert from 'node:assert/strict'
import http from 'node:http'
import crypto from 'node:crypto'
import { after } from 'node:test'
import { Webhook } from 'standardwebhooks'
import { Y, WebSocket, useServer, uniqueRoom, waitFor, waitSynced } from './helpers.mjs'

const SECRET = `whsec_${crypto.randomBytes(32).toString('base64')}`
const BEARER = 'Bearer callback-token-0123456789'
const verifier = new Webhook(SECRET)

// Every request the receiver got: { path, headers, raw, body, verified }.
const received = []
const receiver = http.createServer((req, res) => {
  const chunks = []
  req.on('data', (c) => chunks.push(c))
  req.on('end', () => {
    const raw = Buffer.concat(chunks)
    let verified = true
    // jsonParse off: a binary callback's body is no JSON.
    try { verifier.verify(raw, req.headers, { jsonParse: false }) } catch { verified = false }
    const entry = { path: req.url, headers: req.headers, raw, verified, at: Date.now() }
    received.push(entry)
    if (req.url === '/auth') {
      const body = JSON.parse(raw.toString())
      entry.body = body
      const token = body.token
      const answer = token === 'short'
        ? { access: 'write', user: { id: 'short-lived' }, expires_at: Date.now() / 1000 + 2 }
        : token === 'writer' ? { access: 'write', user: { id: 'writer', name: 'W' } } : null
      res.writeHead(answer ? 200 : 403, { 'content-type': 'application/json' })
      return res.end(JSON.stringify(answer ?? {}))
    }
    if (req.url === '/events') {
      entry.body = JSON.parse(raw.toString())
      res.writeHead(204)
      return res.end()
    }
    if (req.url === '/callback') {
      const ok = req.headers.authorization === BEARER && verified
      res.writeHead(ok ? 200 : 401)
      return res.end()
    }
    res.writeHead(404)
    res.end()
  })
})
await new Promise((resolve) => receiver.listen(0, '127.0.0.1', resolve))
const base = `http://127.0.0.1:${receiver.address().port}`
// Keep-alive connections from partyline would hold close() open.
after(() => new Promise((resolve) => { receiver.close(resolve); receiver.closeAllConnections() }))

const ctx = useServer({
  extraArgs: [
    '--auth-mode', 'webhook', '--webhook-url', `${base}/auth`, '--cache-ttl', '0s',
    '--webhook-secret', SECRET,
    '--callback-url', `${base}/callback`, '--callback-format', 'binary',
    '--callback-header', `Authorization: ${BEARER}`,
    '--debounce-wait', '100ms', '--debounce-max-wait', '500ms',
    '--events-url', `${base}/events`
  ]
})

// `ws` with the headers a browser (and a forging client) would send.
const socketWith = (headers, origin) => class extends WebSocket {
  constructor (url, protocols) { super(url, protocols, { headers, origin }) }
}

ctx.test('the auth webhook sees forwarded headers, the peer address and the path, signed', { partylineOnly: true }, async (_t, clients) => {
  const room = uniqueRoom('doc')
  const headers = {
    Cookie: 'session=abc123',
    'User-Agent': 'partyline-webhook-test',
    'X-Forwarded-For': '6.6.6.6',
    'X-Not-Forwarded': 'secret'
  }
  const c = clients.pk(room, {
    params: { token: 'writer' },
    WebSocketPolyfill: socketWith(headers, 'https://app.example.com')
  })
  await waitSynced(c.provider)
  const call = received.find((r) => r.path === '/auth' && r.body?.room === room)
  assert.ok(call, 'the webhook was asked')
  assert.deepEqual(call.body.headers, {
    cookie: 'session=abc123',
    origin: 'https://app.example.com',
    'user-agent': 'partyline-webhook-test'
  })
  // No --trusted-proxies: the forged X-Forwarded-For is not believed.
  assert.equal(call.body.ip, '127.0.0.1')
  assert.equal(call.body.path, `/parties/main/${room}`)
  assert.equal(call.body.party, 'main')
  assert.equal(call.body.params.token, 'writer')
  assert.ok(call.verified, 'the signature verifies with standardwebhooks')
  assert.match(call.headers['webhook-id'], /^msg_/)
  // A tampered body does not verify: the library really checks.
  const tampered = Buffer.from(call.raw)
  tampered[tampered.length - 2] ^= 1
  assert.throws(() => verifier.verify(tampered, call.headers, { jsonParse: false }))
})

ctx.test('expires_at closes the session with 4401 on time and y-websocket stays closed', { partylineOnly: true }, async (_t, clients) => {
  const room = uniqueRoom('doc')
  const c = clients.ws(room, { params: { token: 'short' } })
  const closed = new Promise((resolve) => c.provider.on('closed', (event) => resolve({ ...event, at: Date.now() })))
  await waitSynced(c.provider)
  const call = received.find((r) => r.path === '/auth' && r.body?.room === room)
  const expiresAtMs = call.at + 2000
  const event = await closed
  assert.equal(event.code, 4401)
  assert.ok(event.at >= expiresAtMs - 300, `closed ${expiresAtMs - event.at} ms early`)
  assert.ok(event.at <= expiresAtMs + 1500, `closed ${event.at - expiresAtMs} ms late`)
  const asked = received.filter((r) => r.path === '/auth' && r.body?.room === room).length
  await new Promise((resolve) => setTimeout(resolve, 2500))
  assert.equal(c.provider.wsconnected, false)
  assert.equal(received.filter((r) => r.path === '/auth' && r.body?.room === room).length, asked, 'it reconnected')
})

ctx.test('a binary callback with a bearer header gives the room content to Y.applyUpdate', { partylineOnly: true }, async (_t, clients) => {
  const room = uniqueRoom('doc')
  const c = clients.ws(room, { params: { token: 'writer' } })
  await waitSynced(c.provider)
  c.doc.getText('text').insert(0, 'backed up;')
  c.doc.getMap('map').set('k', 42)
  const ofRoom = (r) => r.path === '/callback' && decodeURIComponent(r.headers['x-partyline-room'] ?? '') === room
  const callback = await waitFor(() => received.findLast((r) => {
    if (!ofRoom(r)) return false
    const doc = new Y.Doc()
    Y.applyUpdate(doc, new Uint8Array(r.raw))
    return doc.getText('text').toString() === 'backed up;' && doc.getMap('map').get('k') === 42
  }), { timeout: 10_000, what: 'a callback with the room content' }).then(() =>
    received.findLast(ofRoom))
  assert.equal(callback.headers['content-type'], 'application/octet-stream')
  assert.equal(callback.headers.authorization, BEARER)
  assert.ok(callback.verified, 'the callback signature verifies with standardwebhooks')
})

ctx.test('a provider\'s session comes and goes as signed lifecycle events, in order', { partylineOnly: true }, async (_t, clients) => {
  const room = uniqueRoom('doc')
  const c = clients.ws(room, { params: { token: 'writer' } })
  await waitSynced(c.provider)
  c.provider.destroy()
  const events = () => received.filter((r) => r.path === '/events' && r.body?.data?.room === room)
  await waitFor(() => events().some((e) => e.body.type === 'session.closed'), { what: 'session.closed' })
  const seen = events()
  assert.deepEqual(seen.map((e) => e.body.type), ['room.loaded', 'session.opened', 'session.closed'])
  for (const e of seen) assert.ok(e.verified, `${e.body.type} is signed`)
  const [, opened, closed] = seen.map((e) => e.body.data)
  assert.equal(opened.user, 'writer')
  assert.equal(opened.access, 'write')
  assert.equal(closed.session, opened.session)
  // y-websocket's destroy() closes without a code: 1005, "no status".
  assert.equal(closed.close_code, 1005)
  assert.ok(closed.duration_ms >= 0)
})
