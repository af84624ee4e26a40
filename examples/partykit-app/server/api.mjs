// The app's own backend (the role Convex, Supabase or your API server plays
// for a real app), with node:http and nothing else.
//
// Called by Partyline:
//   POST /partyline/auth        the auth webhook (--auth-mode webhook), asked
//                               before every connect: may this user open this
//                               room, and may they write?
//   POST /partyline/backup      the debounced state callback (--callback-url):
//                               the room's whole state, kept per room on disk
// Called by the front end (through Vite's proxy):
//   GET  /api/me?user=ID        the user's profile and the rooms they may open
//   GET  /api/access?user=ID&room=ROOM
//                               the user's access to a room (the browser is
//                               not told why a WebSocket failed, so the app
//                               asks here after a refused connect)
// For people and tests:
//   GET  /partyline/backup/{room}  the latest stored state of a room
//   GET  /healthz
//
// Environment: API_PORT (8788), PERMISSIONS_FILE (data/permissions.json),
// BACKUP_DIR (data/backups), PARTYLINE_WEBHOOKS_SECRET (`whsec_<base64>`;
// when set, callbacks must carry a valid Standard Webhooks signature;
// partyline reads the same variable to sign them).
import http from 'node:http'
import { fileURLToPath } from 'node:url'
import { BackupStore, bodyProblem, signatureProblem } from './backups.mjs'
import { accessTo, loadPermissions, roomsOf, userOf } from './permissions.mjs'

const PORT = Number(process.env.API_PORT ?? 8788)
const PERMISSIONS_FILE =
  process.env.PERMISSIONS_FILE ?? fileURLToPath(new URL('../data/permissions.json', import.meta.url))
const BACKUP_DIR = process.env.BACKUP_DIR ?? fileURLToPath(new URL('../data/backups', import.meta.url))
const CALLBACK_SECRET = process.env.PARTYLINE_WEBHOOKS_SECRET || null
const MAX_BODY_BYTES = 64 * 1024 * 1024

const backups = new BackupStore(BACKUP_DIR)

/**
 * In this demo the token IS the user id (`?user=alice` in the page). A real
 * app sends its session token or JWT here and verifies it: that is the one
 * line to change.
 * @param {string | null | undefined} token
 */
function userIdFromToken(token) {
  return token || null
}

/**
 * Partyline's auth webhook. Request: {room, party, token, params} (params:
 * every query parameter of the WebSocket URL, y-partykit's `_pk` connection
 * id included; answer the same whatever `_pk` is, Partyline caches by the
 * rest). Answer: 200 {access: "write" | "read", user: {id, name}}, 401 (who
 * are you?) or 403 (not for you); both refuse the WebSocket upgrade.
 */
function authorize(body) {
  const perms = loadPermissions(PERMISSIONS_FILE)
  const userId = userIdFromToken(body?.token)
  const user = userOf(perms, userId)
  if (!user) return { status: 401, body: { error: 'unknown user' } }
  // y-partykit's default party is "main"; y-websocket URLs have none.
  if (body.party !== null && body.party !== undefined && body.party !== 'main') {
    return { status: 403, body: { error: 'no such party' } }
  }
  const access = typeof body.room === 'string' ? accessTo(perms, user.id, body.room) : null
  if (!access) return { status: 403, body: { error: 'no access to this document' } }
  return { status: 200, body: { access, user: { id: user.id, name: user.name } } }
}

/**
 * @param {http.IncomingMessage} req
 * @param {http.ServerResponse} res
 */
async function handle(req, res) {
  const url = new URL(req.url ?? '/', 'http://localhost')
  const path = url.pathname

  if (req.method === 'POST' && path === '/partyline/auth') {
    const body = parseJson(await readBody(req))
    const answer = authorize(body)
    log(`auth ${body?.room} token=${JSON.stringify(body?.token ?? null)} → ${answer.status} ${answer.body.access ?? ''}`)
    return send(res, answer.status, answer.body)
  }

  if (req.method === 'POST' && path === '/partyline/backup') {
    const raw = await readBody(req)
    if (CALLBACK_SECRET) {
      const signed = {
        id: header(req, 'webhook-id'),
        timestamp: header(req, 'webhook-timestamp'),
        signature: header(req, 'webhook-signature'),
      }
      const problem = signatureProblem(CALLBACK_SECRET, signed, raw)
      if (problem) {
        log(`backup refused: ${problem}`)
        return send(res, 401, { error: problem })
      }
    }
    const body = parseJson(raw)
    const problem = bodyProblem(body)
    if (problem) return send(res, 400, { error: problem })
    const kept = backups.put(body)
    log(`backup ${body.room} epoch=${body.epoch} taken=${body.taken_unix_ms} ${kept ? 'kept' : 'older than the one kept, ignored'}`)
    // 2xx either way: an older state is no error, Partyline must not retry it.
    return send(res, 200, { kept })
  }

  if (req.method === 'GET' && path.startsWith('/partyline/backup/')) {
    const room = decodeURIComponent(path.slice('/partyline/backup/'.length))
    const record = backups.get(room)
    return record ? send(res, 200, record) : send(res, 404, { error: 'no backup of this room yet' })
  }

  if (req.method === 'GET' && path === '/api/me') {
    const perms = loadPermissions(PERMISSIONS_FILE)
    const user = userOf(perms, url.searchParams.get('user'))
    if (!user) return send(res, 404, { error: 'unknown user' })
    return send(res, 200, { user, rooms: roomsOf(perms, user.id) })
  }

  if (req.method === 'GET' && path === '/api/access') {
    const perms = loadPermissions(PERMISSIONS_FILE)
    const access = accessTo(perms, url.searchParams.get('user'), url.searchParams.get('room') ?? '')
    return send(res, 200, { access: access ?? 'none' })
  }

  if (req.method === 'GET' && path === '/healthz') return send(res, 200, { ok: true })

  return send(res, 404, { error: 'not found' })
}

/** @param {http.IncomingMessage} req */
function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = []
    let size = 0
    req.on('data', (chunk) => {
      size += chunk.length
      if (size > MAX_BODY_BYTES) {
        reject(Object.assign(new Error('body too large'), { status: 413 }))
        req.destroy()
        return
      }
      chunks.push(chunk)
    })
    req.on('end', () => resolve(Buffer.concat(chunks)))
    req.on('error', reject)
  })
}

/** @param {Buffer} raw */
function parseJson(raw) {
  try {
    return JSON.parse(raw.toString('utf8'))
  } catch {
    throw Object.assign(new Error('body is not JSON'), { status: 400 })
  }
}

function header(req, name) {
  const value = req.headers[name]
  return Array.isArray(value) ? value[0] : value
}

function send(res, status, body) {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
  res.end(text)
}

function log(line) {
  console.log(`[api] ${line}`)
}

const requestHandler = (req, res) => {
  handle(req, res).catch((error) => {
    const status = error.status ?? 500
    if (status === 500) console.error('[api]', error)
    if (!res.headersSent) send(res, status, { error: error.message })
    else res.destroy()
  })
}

// Both loopbacks, as `partyline dev` does: "localhost" resolves to ::1 first
// on some machines and to 127.0.0.1 on others, and Partyline, Vite's proxy
// and the browser each pick their own.
let listening = 0
for (const host of ['127.0.0.1', '::1']) {
  const server = http.createServer(requestHandler)
  server.on('error', (error) => {
    if (host === '::1' && /** @type {any} */ (error).code === 'EADDRNOTAVAIL') return // no IPv6 here
    console.error(`[api] cannot listen on ${host}:${PORT}: ${error.message}`)
    process.exit(1)
  })
  server.listen(PORT, host, () => {
    if (++listening === 1) {
      log(`listening on http://localhost:${PORT} (permissions: ${PERMISSIONS_FILE}, backups: ${BACKUP_DIR}, callback signatures ${CALLBACK_SECRET ? 'checked' : 'NOT checked: set PARTYLINE_WEBHOOKS_SECRET'})`)
    }
  })
}
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(signal, () => process.exit(0))
