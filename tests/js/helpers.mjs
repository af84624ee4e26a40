// Shared helpers for the wire-compatibility tests.
import { test, before, after } from 'node:test'
import http from 'node:http'
import crypto from 'node:crypto'
import * as Y from 'yjs'
import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'
import YPartyKitProvider from 'y-partykit/provider'
import { startServer, isReference, isPartyline } from './server.mjs'

export { Y, WebSocket, WebsocketProvider, YPartyKitProvider, isReference, isPartyline }

// every provider adds a process 'exit' listener; 50+ clients in one test is expected
process.setMaxListeners(500)

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

let roomCounter = 0
// Unique room name per call: `${prefix}-${counter}-${random}` (only [a-z0-9-]).
export const uniqueRoom = (prefix = 'room') =>
  `${prefix}-${++roomCounter}-${crypto.randomBytes(4).toString('hex')}`

// Polls `pred` every `interval` ms until it returns truthy; throws after `timeout` ms.
// `what` is a string or a function returning a string (evaluated on timeout, for details).
export const waitFor = async (pred, { timeout = 5000, interval = 20, what = 'condition' } = {}) => {
  const deadline = Date.now() + timeout
  for (;;) {
    let ok = false
    try {
      ok = await pred()
    } catch (e) {
      if (e?.code === 'ERR_ASSERTION') throw e // a broken invariant, not "not yet"
      ok = false
    }
    if (ok) return
    if (Date.now() >= deadline) {
      const desc = typeof what === 'function' ? what() : what
      throw new Error(`timed out after ${timeout} ms waiting for ${desc}`)
    }
    await sleep(interval)
  }
}

export const waitSynced = (provider, timeout = 10_000) =>
  waitFor(() => provider.synced, { timeout, what: `provider synced (${provider.url})` })

export const waitAllSynced = (providers, timeout = 10_000) =>
  Promise.all(providers.map((p) => waitSynced(p, timeout)))

// JSON with object keys sorted (Y.Map key order depends on arrival order, not on content).
export const canonical = (v) => JSON.stringify(v, (_k, val) =>
  val && typeof val === 'object' && !Array.isArray(val)
    ? Object.fromEntries(Object.keys(val).sort().map((k) => [k, val[k]]))
    : val)

// Full-content fingerprint of a doc (all root types used by the tests).
export const content = (doc) => canonical({
  text: doc.getText('text').toString(),
  map: doc.getMap('map').toJSON(),
  array: doc.getArray('array').toJSON()
})

export const stateVector = (doc) => Buffer.from(Y.encodeStateVector(doc)).toString('hex')

// Tracks every client a test creates and tears them all down at the end.
export class Clients {
  constructor (server) {
    this.server = server
    this.providers = []
    this.docs = []
    this.raws = []
  }

  // y-websocket client on ws://ADDR[/prefix]/ROOM
  ws (room, { doc = new Y.Doc(), prefix = '', ...opts } = {}) {
    this.docs.push(doc)
    const provider = new WebsocketProvider(this.server.url + prefix, room, doc, {
      WebSocketPolyfill: WebSocket,
      disableBc: true,
      ...opts
    })
    this.providers.push(provider)
    return { doc, provider }
  }

  // y-partykit client; by default ws://ADDR/parties/main/ROOM?_pk=<uuid>
  pk (room, { doc = new Y.Doc(), ...opts } = {}) {
    this.docs.push(doc)
    const provider = new YPartyKitProvider(this.server.addr, room, doc, {
      WebSocketPolyfill: WebSocket,
      disableBc: true,
      ...opts
    })
    this.providers.push(provider)
    return { doc, provider }
  }

  // raw `ws` socket on ws://ADDR + path; records every frame
  async raw (path, { timeout = 5000 } = {}) {
    const c = new RawClient(this.server.url + path)
    this.raws.push(c)
    await c.opened(timeout)
    return c
  }

  async destroyAll () {
    for (const p of this.providers) { try { p.destroy() } catch {} }
    for (const d of this.docs) { try { d.destroy() } catch {} }
    for (const r of this.raws) { try { r.ws.terminate() } catch {} }
    this.providers = []
    this.docs = []
    this.raws = []
  }
}

export class RawClient {
  constructor (url) {
    this.url = url
    this.ws = new WebSocket(url)
    this.ws.binaryType = 'nodebuffer'
    this.frames = [] // { isBinary, data: Buffer, text: string|null, at }
    this.closed = null // { code, reason }
    this.ws.on('message', (data, isBinary) => {
      this.frames.push({ isBinary, data, text: isBinary ? null : data.toString('utf8'), at: Date.now() })
    })
    this.ws.on('close', (code, reason) => { this.closed = { code, reason: reason.toString() } })
    this.ws.on('error', (err) => { this.error = err })
  }

  opened (timeout = 5000) {
    return new Promise((resolve, reject) => {
      if (this.ws.readyState === WebSocket.OPEN) return resolve()
      const timer = setTimeout(() => reject(new Error(`raw ws ${this.url} not open after ${timeout} ms`)), timeout)
      this.ws.once('open', () => { clearTimeout(timer); resolve() })
      this.ws.once('error', (e) => { clearTimeout(timer); reject(e) })
      this.ws.once('unexpected-response', (_req, res) => { clearTimeout(timer); reject(new Error(`unexpected HTTP ${res.statusCode} for ${this.url}`)) })
    })
  }

  binaryFrames () { return this.frames.filter((f) => f.isBinary) }
  textFrames () { return this.frames.filter((f) => !f.isBinary) }

  send (data) { this.ws.send(data) }
}

// A JWT signed with HS256 (or an unsigned `alg: none` one), made by hand
// so the tests depend on no JWT library.
export const signJwt = (claims, secret, { alg = 'HS256' } = {}) => {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url')
  const head = `${part({ alg, typ: 'JWT' })}.${part(claims)}`
  if (alg === 'none') return `${head}.`
  return `${head}.${crypto.createHmac('sha256', secret).update(head).digest('base64url')}`
}

// Performs a WebSocket upgrade request by hand. Resolves { status, body, headers }; status 101
// means the server accepted the upgrade (the socket is closed right away).
export const upgradeRequest = (server, rawPath, { timeout = 5000, headers = {} } = {}) => new Promise((resolve, reject) => {
  const req = http.request({
    host: server.host,
    port: server.port,
    path: rawPath,
    method: 'GET',
    headers: {
      Connection: 'Upgrade',
      Upgrade: 'websocket',
      'Sec-WebSocket-Key': crypto.randomBytes(16).toString('base64'),
      'Sec-WebSocket-Version': '13',
      ...headers
    }
  })
  const timer = setTimeout(() => { req.destroy(); reject(new Error(`no answer to upgrade of ${rawPath} within ${timeout} ms`)) }, timeout)
  req.on('upgrade', (res, socket) => {
    clearTimeout(timer)
    socket.destroy()
    resolve({ status: res.statusCode, body: '', headers: res.headers })
  })
  req.on('response', (res) => {
    const chunks = []
    res.on('data', (c) => chunks.push(c))
    res.on('end', () => {
      clearTimeout(timer)
      resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString('utf8'), headers: res.headers })
    })
  })
  req.on('error', (e) => { clearTimeout(timer); reject(e) })
  req.end()
})

// Registers before/after hooks that run one server for the whole test file and returns
// { server, test }. `test(name, [opts], fn)` runs fn(t, clients) with:
//   - opts.partylineOnly: skipped with t.skip('partyline only') against the reference server
//   - opts.timeout (ms, default 60 s): hard deadline enforced by the wrapper
//   - the server log tail printed on failure, every client destroyed afterwards
export const useServer = ({ extraArgs = [] } = {}) => {
  const ctx = { server: null, failed: false }
  before(async () => { ctx.server = await startServer({ extraArgs }) })
  after(async () => {
    if (!ctx.server) return
    try {
      await ctx.server.stop('SIGTERM')
    } finally {
      ctx.server.cleanup(ctx.failed)
    }
  })
  ctx.test = (name, opts, fn) => {
    if (typeof opts === 'function') { fn = opts; opts = {} }
    const { partylineOnly = false, timeout = 60_000, ...rest } = opts
    return test(name, { ...rest, timeout: timeout + 15_000 }, async (t) => {
      if (partylineOnly && isReference) {
        t.skip('partyline only')
        return
      }
      const clients = new Clients(ctx.server)
      let timer
      try {
        await Promise.race([
          fn(t, clients),
          new Promise((_resolve, reject) => {
            timer = setTimeout(() => reject(new Error(`test exceeded its ${timeout} ms deadline`)), timeout)
          })
        ])
      } catch (e) {
        ctx.failed = true
        console.error(`\n[${name}] FAILED against ${ctx.server?.kind}: ${e?.stack || e}`)
        if (ctx.server) console.error(ctx.server.logTail())
        throw e
      } finally {
        clearTimeout(timer)
        await clients.destroyAll()
      }
    })
  }
  return ctx
}
