// Restoring a version of a large document (issue 20, point 6): `partyline
// dev` (a `history` room), CLIENTS (4) live y-websocket providers in this
// process, one of them writing a Tiptap-like document of PARAGRAPHS (3,150)
// paragraphs of ~250 characters with a bold run (~1 MiB as one Yjs
// update), a version taken, then a tenth of the paragraphs rewritten, a
// tenth deleted and a tenth added. Then, ROUNDS (5) times: POST
// …/versions/{v1}/restore, and the time from the call to each live
// provider's document equal to the version again (and the room node's own
// time from its log: fetch, build and log the update), then the same back
// to the edited version. Prints each round and the medians, and one JSON
// line.
//
//   node bench/restore-version.mjs BINARY
//   CLIENTS=8 PARAGRAPHS=8000 node bench/restore-version.mjs BINARY
//
// The providers share this process: a client's apply of the restore update
// waits for the clients before it, so the last client's time includes the
// others' apply times (an upper bound of what separate browsers see).
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const modules = path.join(repo, 'tests/js/node_modules')
const load = (entry) => import(pathToFileURL(path.join(modules, entry)).href)
const Y = await load('yjs/dist/yjs.mjs')
const { WebsocketProvider } = await load('y-websocket/src/y-websocket.js')
const { default: WebSocket } = await load('ws/wrapper.mjs')

const binary = process.argv[2]
const CLIENTS = Number(process.env.CLIENTS || 4)
const PARAGRAPHS = Number(process.env.PARAGRAPHS || 3150)
const ROUNDS = Number(process.env.ROUNDS || 5)
const KEY = 'bench-restore-version-key-0123'
// The second provider receiving the writer's document through the server
// is how the bench knows the server has it all before taking a version.
if (CLIENTS < 2) throw new Error('CLIENTS must be at least 2')
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const waitFor = async (pred, what, timeout = 60_000) => {
  const deadline = Date.now() + timeout
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${typeof what === 'function' ? what() : what}`)
    await sleep(5)
  }
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'partyline-restore-bench-'))
const server = spawn(binary, ['dev', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'data'),
  '--api-key', KEY, '--room-mode', 'bench-=history'], {
  env: { ...process.env, PARTYLINE_LOG: 'warn,partyline_room_node::service=info' },
  stdio: ['ignore', 'pipe', 'pipe']
})
// The room node's own time for each restore: fetch, build the update, log
// it (its `version restored` line).
const serverTimes = []
let serverLog = ''
server.stderr.on('data', (chunk) => {
  serverLog += chunk
  let newline
  while ((newline = serverLog.indexOf('\n')) >= 0) {
    const line = serverLog.slice(0, newline)
    serverLog = serverLog.slice(newline + 1)
    const match = line.match(/version restored.*took=([\d.]+)(µs|ms|s)\b/)
    if (match) serverTimes.push(Number(match[1]) * { µs: 0.001, ms: 1, s: 1000 }[match[2]])
  }
})
const addr = await new Promise((resolve, reject) => {
  let out = ''
  server.stdout.on('data', (chunk) => {
    out += chunk
    const match = out.match(/listening on ws:\/\/(\S+)/)
    if (match) resolve(match[1])
  })
  server.on('exit', (code) => reject(new Error(`partyline exited (${code})`)))
})
const api = (route, init = {}) => fetch(`http://${addr}${route}`, {
  ...init, headers: { Authorization: `Bearer ${KEY}`, ...(init.headers || {}) }
})

const room = `bench-restore-${Date.now()}`
const clients = []
for (let i = 0; i < CLIENTS; i++) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(`ws://${addr}`, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
  clients.push({ doc, provider })
}
await waitFor(() => clients.every((c) => c.provider.synced), 'providers synced')

// A document as an editor writes it: paragraphs of text with some bold.
const words = 'lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor '
const paragraph = (i) => {
  const p = new Y.XmlElement('paragraph')
  const t = new Y.XmlText()
  p.insert(0, [t])
  t.insert(0, `${i}: ${words.repeat(3)}`)
  t.format(0, 12, { bold: true })
  return p
}
const writer = clients[0].doc
const fragment = writer.getXmlFragment('default')
for (let start = 0; start < PARAGRAPHS; start += 100) {
  writer.transact(() => {
    fragment.push(Array.from({ length: Math.min(100, PARAGRAPHS - start) }, (_, k) => paragraph(start + k)))
  })
}
const text = (doc) => doc.getXmlFragment('default').toString()
const v1Text = text(writer)
await waitFor(() => clients.every((c) => text(c.doc).length === v1Text.length), 'document at every provider', 120_000)
const take = async (label) => {
  const response = await api(`/v1/rooms/${room}/versions`, {
    method: 'POST', body: JSON.stringify({ label }), headers: { 'Content-Type': 'application/json' }
  })
  if (response.status !== 201) throw new Error(`take: ${response.status} ${await response.text()}`)
  return response.json()
}
const v1 = await take('v1')

// A tenth rewritten, a tenth deleted, a tenth added.
const tenth = Math.max(1, Math.floor(PARAGRAPHS / 10))
writer.transact(() => {
  for (let i = 0; i < tenth; i++) {
    const t = fragment.get(i * 5).get(0)
    t.delete(0, 20)
    t.insert(0, 'rewritten ')
  }
})
writer.transact(() => fragment.delete(PARAGRAPHS - tenth, tenth))
writer.transact(() => fragment.insert(0, Array.from({ length: tenth }, (_, k) => paragraph(PARAGRAPHS + k))))
const v2Text = text(writer)
await waitFor(() => clients.every((c) => text(c.doc) === v2Text), 'edits at every provider', 120_000)
const v2 = await take('v2')

const restore = async (version, wanted) => {
  const converged = clients.map(() => null)
  const started = performance.now()
  const handlers = clients.map((c, i) => {
    const handler = () => {
      if (converged[i] === null && text(c.doc) === wanted) converged[i] = performance.now() - started
    }
    c.doc.on('update', handler)
    return handler
  })
  const logged = serverTimes.length
  const response = await api(`/v1/rooms/${room}/versions/${version.id}/restore`, { method: 'POST' })
  const answered = performance.now() - started
  if (response.status !== 204) throw new Error(`restore: ${response.status} ${await response.text()}`)
  await waitFor(() => converged.every((t) => t !== null) && serverTimes.length > logged,
    () => `every provider at the version (room node: ${serverTimes[logged] ?? 'not logged yet'} ms; providers: ${converged})`, 600_000)
  clients.forEach((c, i) => c.doc.off('update', handlers[i]))
  return { server: serverTimes[logged], answered, first: Math.min(...converged), last: Math.max(...converged) }
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const rounds = []
console.log(`document: ${PARAGRAPHS} paragraphs, version ${v1.size} bytes (edited: ${v2.size} bytes); ${CLIENTS} live providers`)
for (let round = 0; round < ROUNDS; round++) {
  for (const [name, version, wanted] of [['v1', v1, v1Text], ['v2', v2, v2Text]]) {
    const r = await restore(version, wanted)
    rounds.push({ to: name, ...r })
    console.log(`restore ${name}: room node ${r.server.toFixed(1)} ms, answer here ${r.answered.toFixed(1)} ms, first provider ${r.first.toFixed(1)} ms, every provider ${r.last.toFixed(1)} ms`)
  }
}
const state = await api(`/v1/rooms/${room}`)
const info = await state.json()
const result = {
  bench: 'restore-version',
  paragraphs: PARAGRAPHS,
  clients: CLIENTS,
  version_bytes: v1.size,
  doc_bytes_after: info.doc_bytes,
  median_room_node_ms: Number(median(rounds.map((r) => r.server)).toFixed(1)),
  median_answered_ms: Number(median(rounds.map((r) => r.answered)).toFixed(1)),
  median_first_provider_ms: Number(median(rounds.map((r) => r.first)).toFixed(1)),
  median_every_provider_ms: Number(median(rounds.map((r) => r.last)).toFixed(1))
}
console.log(`median over ${rounds.length} restores: room node ${result.median_room_node_ms} ms, first provider converged ${result.median_first_provider_ms} ms, every provider ${result.median_every_provider_ms} ms; room now ${info.doc_bytes} bytes`)
console.log(JSON.stringify(result))
for (const c of clients) c.provider.destroy()
server.kill('SIGTERM')
await new Promise((resolve) => server.on('exit', resolve))
fs.rmSync(dir, { recursive: true, force: true })
process.exit(0)
