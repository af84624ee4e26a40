// Server messages and ephemeral rooms with real clients: a message POSTed
// to `/v1/rooms/{room}/messages` reaches every y-partyserver provider's
// `custom-message` listener (as `broadcastCustomMessage` would send it),
// and an ephemeral room refuses a provider's document edit visibly (the
// provider is told; nobody else gets the edit) while awareness still
// flows.
import assert from 'node:assert/strict'
import YProvider from 'y-partyserver/provider'
import { Y, WebSocket, useServer, uniqueRoom, waitFor, waitSynced, sleep } from './helpers.mjs'

const KEY = 'js-test-messages-api-key-0123'
const ctx = useServer({ extraArgs: ['--api-key', KEY, '--room-mode', 'cursor-=ephemeral'] })

const post = (path, body) => fetch(`${ctx.server.httpUrl}${path}`, {
  method: 'POST', body, headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'text/plain' }
})

// A y-partyserver provider (what PartyKit's successor apps use).
const partyserver = (providers, room) => {
  const doc = new Y.Doc()
  const provider = new YProvider(ctx.server.addr, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
  providers.push(provider)
  const messages = []
  provider.on('custom-message', (message) => messages.push(message))
  return { doc, provider, messages }
}

ctx.test('a server message reaches every session\'s __YPS: handler', { partylineOnly: true }, async (_t, clients) => {
  const room = uniqueRoom('doc')
  const providers = []
  try {
    const a = partyserver(providers, room)
    const b = partyserver(providers, room)
    // A bare socket on the `main` party's room of that name: stock
    // y-websocket and y-partykit providers take every frame for y-sync
    // and would choke on a text frame, so rooms that get server messages
    // are rooms of y-partyserver clients.
    const raw = await clients.raw(`/parties/main/${room}`)
    await waitSynced(a.provider)
    await waitSynced(b.provider)
    const message = JSON.stringify({ type: 'announce', text: 'deploy at 5 ünï' })
    const response = await post(`/v1/rooms/${room}/messages`, message)
    assert.equal(response.status, 200)
    assert.equal((await response.json()).sessions, 3)
    await waitFor(() => a.messages.length === 1 && b.messages.length === 1, { what: 'the message at both providers' })
    assert.deepEqual(a.messages, [message])
    assert.deepEqual(b.messages, [message])
    await waitFor(() => raw.textFrames().length === 1, { what: 'the text frame at the bare socket' })
    assert.equal(raw.textFrames()[0].text, `__YPS:${message}`)
    // A room nobody has open gets it nowhere, and is not loaded for it.
    const nobody = uniqueRoom('nobody')
    const empty = await post(`/v1/rooms/${nobody}/messages`, 'hi')
    assert.deepEqual(await empty.json(), { room: nobody, sessions: 0 })
    const tooBig = await post(`/v1/rooms/${room}/messages`, 'x'.repeat(64 * 1024 + 1))
    assert.equal(tooBig.status, 400)
  } finally {
    for (const p of providers) p.destroy()
  }
})

ctx.test('an ephemeral room refuses a document edit visibly and still relays awareness', { partylineOnly: true }, async (_t, clients) => {
  const room = uniqueRoom('cursor')
  const warnings = []
  const warn = console.warn
  console.warn = (...args) => { warnings.push(args.join(' ')); warn(...args) }
  try {
    const a = clients.ws(room)
    const b = clients.ws(room)
    await waitSynced(a.provider)
    await waitSynced(b.provider)
    a.provider.awareness.setLocalStateField('cursor', { x: 3 })
    await waitFor(() => [...b.provider.awareness.getStates().values()].some((s) => s.cursor?.x === 3), { what: 'awareness across the ephemeral room' })
    a.doc.getText('text').insert(0, 'lost?')
    await waitFor(() => warnings.some((w) => w.includes('ephemeral room')), { what: 'the permission-denied message at the writer' })
    await sleep(300)
    assert.equal(b.doc.getText('text').toString(), '')
  } finally {
    console.warn = warn
  }
})
