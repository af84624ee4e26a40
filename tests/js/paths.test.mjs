// URL path forms and room names.
//
// We do NOT assume that /parties/main/R, /party/R and /R name the same document; each form is
// only required to work on its own.
import assert from 'node:assert/strict'
import WebSocket from 'ws'
import { useServer, uniqueRoom, waitFor, waitAllSynced, sleep, upgradeRequest, canonical } from './helpers.mjs'

const ctx = useServer()

const converges = async (a, b, label) => {
  await waitAllSynced([a.provider, b.provider])
  a.doc.getText('text').insert(0, `A@${label} `)
  b.doc.getMap('map').set('from', `B@${label}`)
  await waitFor(() =>
    b.doc.getText('text').toString() === `A@${label} ` && a.doc.getMap('map').get('from') === `B@${label}`, {
    timeout: 5000, what: `two clients converge over ${label}`
  })
}

ctx.test('path form /ROOM (y-websocket) works', async (_t, clients) => {
  const room = uniqueRoom('form-plain')
  const a = clients.ws(room)
  const b = clients.ws(room)
  assert.match(a.provider.url, new RegExp(`^ws://127\\.0\\.0\\.1:\\d+/${room}$`))
  await converges(a, b, '/ROOM')
})

ctx.test('path form /parties/main/ROOM (y-partykit default, with _pk) works', async (_t, clients) => {
  const room = uniqueRoom('form-parties')
  const a = clients.pk(room)
  const b = clients.pk(room)
  await waitFor(() => a.provider.ws !== null, { what: 'pk socket created' })
  // y-partykit 0.0.33 URL: ws://HOST/parties/main/ROOM?_pk=<uuid>
  assert.match(a.provider.url, new RegExp(`^ws://127\\.0\\.0\\.1:\\d+/parties/main/${room}\\?_pk=[0-9a-f-]{36}$`))
  await converges(a, b, '/parties/main/ROOM')
  // a y-websocket client on the same full path joins the same room
  const c = clients.ws(room, { prefix: '/parties/main' })
  await waitFor(() => c.doc.getMap('map').get('from') === 'B@/parties/main/ROOM', { what: 'y-websocket client on /parties/main/ROOM' })
})

ctx.test('path form /parties/main/ROOM with extra query params (token) works', async (_t, clients) => {
  const room = uniqueRoom('form-params')
  const a = clients.pk(room, { params: { token: 'dev-token', foo: 'bar baz' } })
  const b = clients.pk(room, { params: async () => ({ token: 'dev-token-2' }) })
  await waitFor(() => a.provider.ws !== null && b.provider.ws !== null, { what: 'pk sockets created' })
  assert.match(a.provider.url, /\?_pk=[0-9a-f-]{36}&token=dev-token&foo=bar\+baz$/)
  await converges(a, b, 'params')
})

ctx.test('path form /party/ROOM (older y-partykit) works', async (_t, clients) => {
  const room = uniqueRoom('form-party')
  const a = clients.pk(room, { prefix: `/party/${room}` })
  const b = clients.pk(room, { prefix: `/party/${room}` })
  await waitFor(() => a.provider.ws !== null, { what: 'pk socket created' })
  assert.match(a.provider.url, new RegExp(`^ws://127\\.0\\.0\\.1:\\d+/party/${room}\\?_pk=`))
  await converges(a, b, '/party/ROOM')
})

ctx.test('room names with -, _, ., %-encoding, case and / work and are isolated from each other', { timeout: 60_000 }, async (_t, clients) => {
  // [client kind, room name as given to the provider]
  const names = [
    ['pk', 'doc-abc123'],
    ['pk', 'diagram-xyz789'],
    ['ws', 'a-b'],
    ['ws', 'a_b'],
    ['ws', 'a.b'],
    ['ws', 'a.b.c-d_e'],
    ['ws', 'a%20b'],
    ['ws', 'caf%C3%A9'],
    ['ws', 'Case-Room'],
    ['ws', 'case-room'],
    ['ws', 'team/folder/doc-1'],
    ['ws', 'team/folder'],
    ['pk', 'a_b'] // same name, other path form: only isolation from the others is checked
  ]
  const rooms = []
  for (const [kind, name] of names) {
    const make = () => kind === 'pk' ? clients.pk(name) : clients.ws(name)
    rooms.push({ kind, name, a: make(), b: make() })
  }
  await waitAllSynced(rooms.flatMap((r) => [r.a.provider, r.b.provider]), 15_000)
  rooms.forEach((r, i) => r.a.doc.getMap('map').set(`marker-${i}`, `${r.kind}:${r.name}`))
  await waitFor(() => rooms.every((r, i) => r.b.doc.getMap('map').get(`marker-${i}`) === `${r.kind}:${r.name}`), {
    timeout: 10_000,
    what: () => `every room's marker on its second client: ${rooms.map((r, i) => `${r.kind}:${r.name}=${r.b.doc.getMap('map').get(`marker-${i}`)}`).join(' ')}`
  })
  await sleep(300)
  const pkAB = rooms.findIndex((r) => r.kind === 'pk' && r.name === 'a_b')
  const wsAB = rooms.findIndex((r) => r.kind === 'ws' && r.name === 'a_b')
  rooms.forEach((r, i) => {
    const got = r.b.doc.getMap('map').toJSON()
    if (i === pkAB || i === wsAB) {
      // /a_b and /parties/main/a_b may or may not be one room; nothing else may leak in
      const allowed = new Set([`marker-${pkAB}`, `marker-${wsAB}`])
      assert.ok(Object.keys(got).every((k) => allowed.has(k)), `${r.kind}:${r.name} got ${canonical(got)}`)
    } else {
      assert.deepEqual(got, { [`marker-${i}`]: `${r.kind}:${r.name}` }, `room ${r.kind}:${r.name} is not isolated`)
    }
  })
  // fresh clients of a few rooms get exactly their own state
  for (const i of [0, 6, 7, 10]) {
    const r = rooms[i]
    const c = r.kind === 'pk' ? clients.pk(r.name) : clients.ws(r.name)
    await waitAllSynced([c.provider])
    await waitFor(() => c.doc.getMap('map').get(`marker-${i}`) !== undefined, { what: `fresh client of ${r.name}` })
    assert.deepEqual(c.doc.getMap('map').toJSON(), { [`marker-${i}`]: `${r.kind}:${r.name}` })
  }
})

ctx.test('bad room names get HTTP 400 before the upgrade', { partylineOnly: true }, async () => {
  const s = ctx.server
  const bad = {
    empty: '/',
    'empty with query': '/?_pk=x',
    'empty party room': '/parties/main/',
    'empty old-party room': '/party/',
    '257 bytes': '/' + 'n'.repeat(257),
    '300 bytes': '/' + 'x'.repeat(300),
    '300 bytes (parties form)': '/parties/main/' + 'y'.repeat(300) + '?_pk=abc',
    '129 x é = 258 bytes after decoding': '/' + '%C3%A9'.repeat(129),
    'not UTF-8': '/bad%FF%FEname'
  }
  for (const [label, path] of Object.entries(bad)) {
    const res = await upgradeRequest(s, path)
    assert.equal(res.status, 400, `${label} (${path.slice(0, 40)}...): expected 400, got ${res.status}`)
    assert.ok(res.body.length > 0, `${label}: 400 should carry a reason in the body`)
  }
  const good = {
    '256 bytes': '/' + 'g'.repeat(256),
    '128 x é = 256 bytes after decoding': '/' + '%C3%A9'.repeat(128),
    'parties form 256 bytes': '/parties/main/' + 'h'.repeat(256) + '?_pk=abc'
  }
  for (const [label, path] of Object.entries(good)) {
    const res = await upgradeRequest(s, path)
    assert.equal(res.status, 101, `${label}: expected the upgrade to be accepted, got ${res.status} ${res.body}`)
  }
  // what the stock `ws` client sees: an 'unexpected-response' with status 400, never 'open'
  const status = await new Promise((resolve, reject) => {
    const ws = new WebSocket(`${s.url}/${'z'.repeat(300)}`)
    const timer = setTimeout(() => { ws.terminate(); reject(new Error('no answer within 5 s')) }, 5000)
    ws.on('open', () => { clearTimeout(timer); ws.terminate(); resolve(101) })
    ws.on('unexpected-response', (_req, res) => { clearTimeout(timer); res.resume(); ws.terminate(); resolve(res.statusCode) })
    ws.on('error', () => {})
  })
  assert.equal(status, 400)
})
