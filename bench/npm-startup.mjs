// Start-up through the npm launcher (issue 17): for each way of starting
// `partyline dev` given on the command line, RUNS times: spawn → the first
// WebSocket upgrade answered 101 (a raw handshake on a fresh connection,
// retried every 2 ms), then SIGTERM and wait. Prints the median, min and
// max per way, and one JSON line.
//
//   node bench/npm-startup.mjs RUNS PROJECT_DIR BINARY
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'

const [runs, project, binary] = [Number(process.argv[2]), process.argv[3], process.argv[4]]
const ways = {
  'npx partyline dev': (args) => ['npx', ['partyline', ...args]],
  'node_modules/.bin/partyline dev': (args) => [path.join(project, 'node_modules/.bin/partyline'), args],
  'binary directly': (args) => [binary, args]
}

const freePort = () => new Promise((resolve) => {
  const srv = net.createServer().listen(0, '127.0.0.1', () => {
    const { port } = srv.address()
    srv.close(() => resolve(port))
  })
})

// Resolves true when a WebSocket upgrade on `port` is answered 101.
const upgrade = (port) => new Promise((resolve) => {
  const socket = net.connect(port, '127.0.0.1')
  let answer = ''
  socket.on('connect', () => socket.write(
    'GET /bench-room HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n'))
  socket.on('data', (d) => {
    answer += d
    if (answer.includes('\r\n')) {
      socket.destroy()
      resolve(answer.startsWith('HTTP/1.1 101'))
    }
  })
  socket.on('error', () => resolve(false))
})

const once = async (way, data) => {
  const port = await freePort()
  const [command, args] = ways[way](['dev', '--port', String(port), '--data-dir', data])
  const started = process.hrtime.bigint()
  const child = spawn(command, args, { cwd: project, stdio: 'ignore', detached: true })
  const exited = new Promise((resolve) => child.on('exit', resolve))
  const deadline = Date.now() + 30_000
  while (!(await upgrade(port))) {
    if (Date.now() > deadline) throw new Error(`${way}: no WebSocket within 30 s`)
    await new Promise((resolve) => setTimeout(resolve, 2))
  }
  const ms = Number(process.hrtime.bigint() - started) / 1e6
  process.kill(-child.pid, 'SIGTERM')
  await exited
  return ms
}

const stats = (xs) => {
  const s = [...xs].sort((a, b) => a - b)
  const mid = s.length >> 1
  return { median: s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2, min: s[0], max: s[s.length - 1] }
}

const results = {}
// Interleaved, so drift on a noisy machine hits every way alike.
const samples = Object.fromEntries(Object.keys(ways).map((w) => [w, []]))
for (let i = 0; i < runs; i++) {
  for (const way of Object.keys(ways)) {
    const data = fs.mkdtempSync(path.join(os.tmpdir(), 'pl-startup-'))
    samples[way].push(await once(way, data))
    fs.rmSync(data, { recursive: true, force: true })
  }
}
for (const [way, xs] of Object.entries(samples)) {
  results[way] = stats(xs)
  const { median, min, max } = results[way]
  console.error(`${way.padEnd(34)} median ${median.toFixed(1)} ms  (min ${min.toFixed(1)}, max ${max.toFixed(1)}, ${runs} runs)`)
}
const direct = results['binary directly'].median
console.error(`launcher overhead (median): npx +${(results['npx partyline dev'].median - direct).toFixed(1)} ms, ` +
  `.bin/partyline +${(results['node_modules/.bin/partyline dev'].median - direct).toFixed(1)} ms`)
console.log(JSON.stringify({ bench: 'npm-startup', runs, results }))
