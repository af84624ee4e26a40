// Document-level authorization with real providers: `partyline dev` with
// `--auth-mode jwt`; tokens travel in the providers' `params` (?token=).
import assert from 'node:assert/strict'
import { useServer, uniqueRoom, waitFor, waitSynced, sleep, signJwt, upgradeRequest } from './helpers.mjs'

const SECRET = 'js-test-secret-of-at-least-32-bytes'
const API_KEY = 'js-test-auth-api-key-0123456789'
const ctx = useServer({ extraArgs: ['--auth-mode', 'jwt', '--jwt-secret', SECRET, '--api-key', API_KEY] })
const now = () => Math.floor(Date.now() / 1000)
const token = (rooms, extra = {}) => signJwt({ sub: 'user', exp: now() + 600, rooms, ...extra }, SECRET)

ctx.test('a write token opens its room with both providers, and they converge', { partylineOnly: true }, async (_t, clients) => {
  const room = uniqueRoom('doc')
  const t = token({ [room]: 'write' })
  const a = clients.ws(room, { params: { token: t } })
  const b = clients.pk(room, { params: { token: t } })
  await waitSynced(a.provider)
  await waitSynced(b.provider)
  a.doc.getText('text').insert(0, 'from-a;')
  b.doc.getText('text').insert(0, 'from-b;')
  await waitFor(() => {
    const x = a.doc.getText('text').toString()
    return x === b.doc.getText('text').toString() && x.includes('from-a;') && x.includes('from-b;')
  }, { what: 'convergence' })
})

ctx.test('a read token gets live edits but its own never reach the doc', { partylineOnly: true }, async (_t, clients) => {
  const room = uniqueRoom('doc')
  const writer = clients.ws(room, { params: { token: token({ 'doc-*': 'read', [room]: 'write' }) } })
  const reader = clients.pk(room, { params: { token: token({ 'doc-*': 'read' }) } })
  await waitSynced(writer.provider)
  await waitSynced(reader.provider)
  writer.doc.getText('text').insert(0, 'by-writer;')
  await waitFor(() => reader.doc.getText('text').toString().includes('by-writer;'), { what: 'live edit at the reader' })
  reader.doc.getText('text').insert(0, 'by-reader;')
  await sleep(700)
  assert.ok(!writer.doc.getText('text').toString().includes('by-reader;'), 'a read-only edit reached another client')
  const late = clients.ws(room, { params: { token: token({ [room]: 'read' }) } })
  await waitSynced(late.provider)
  await waitFor(() => late.doc.getText('text').toString() === 'by-writer;', { what: 'a late joiner sees only the writer' })
})

ctx.test('missing, forged, expired, alg:none and other-room tokens are refused before the upgrade', { partylineOnly: true }, async (_t, clients) => {
  const room = uniqueRoom('doc')
  const writer = clients.ws(room, { params: { token: token({ [room]: 'write' }) } })
  await waitSynced(writer.provider)
  writer.doc.getText('text').insert(0, 'kept;')
  await sleep(200)
  const claims = { sub: 'mallory', exp: now() + 600, rooms: { [room]: 'write' } }
  const cases = [
    ['no token', '', 401],
    ['forged', signJwt(claims, 'not-the-secret'), 401],
    ['expired', signJwt({ ...claims, exp: now() - 3600 }, SECRET), 401],
    ['alg none', signJwt(claims, '', { alg: 'none' }), 401],
    ['garbage', 'not.a.jwt', 401],
    ['other room', token({ 'other-room': 'write' }), 403]
  ]
  for (const [what, t, status] of cases) {
    const query = t ? `?token=${encodeURIComponent(t)}` : ''
    const answer = await upgradeRequest(ctx.server, `/${room}${query}`)
    assert.equal(answer.status, status, `${what}: ${answer.status} ${answer.body}`)
  }
  // The room is unchanged: a fresh authorized client sees exactly the old content.
  const check = clients.ws(room, { params: { token: token({ [room]: 'read' }) } })
  await waitSynced(check.provider)
  await waitFor(() => check.doc.getText('text').toString() === 'kept;', { what: 'content unchanged' })
})

ctx.test('a session closes with 4401 when its JWT expires, and y-websocket does not reconnect', { partylineOnly: true, timeout: 30_000 }, async (_t, clients) => {
  const room = uniqueRoom('doc')
  const exp = now() + 2
  const c = clients.ws(room, { params: { token: token({ [room]: 'write' }, { exp }) } })
  const closed = new Promise((resolve) => c.provider.on('closed', (event) => resolve({ ...event, at: Date.now() })))
  await waitSynced(c.provider)
  const event = await closed
  assert.equal(event.code, 4401)
  // The token stops being accepted at exp + the 5 s clock-skew leeway; the
  // session ends then too.
  const endsAt = (exp + 5) * 1000
  assert.ok(event.at >= endsAt - 1000, `closed ${endsAt - event.at} ms before the token's end`)
  assert.ok(event.at <= endsAt + 2000, `closed ${event.at - endsAt} ms after the token's end`)
  await sleep(1500)
  assert.equal(c.provider.wsconnected, false, 'it reconnected')
})

ctx.test('the sessions API lists the users JWTs named', { partylineOnly: true }, async (_t, clients) => {
  const room = uniqueRoom('doc')
  const a = clients.ws(room, { params: { token: token({ [room]: 'write' }, { sub: 'ada' }) } })
  const b = clients.pk(room, { params: { token: token({ [room]: 'read' }, { sub: 'grace' }) } })
  await waitSynced(a.provider)
  await waitSynced(b.provider)
  const response = await fetch(`${ctx.server.httpUrl}/v1/rooms/${room}/sessions`, {
    headers: { Authorization: `Bearer ${API_KEY}` }
  })
  assert.equal(response.status, 200)
  const sessions = (await response.json()).sessions.map((s) => [s.user, s.access]).sort()
  assert.deepEqual(sessions, [['ada', 'write'], ['grace', 'read']])
})
