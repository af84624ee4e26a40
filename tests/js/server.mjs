// Starts and stops the server under test.
//
//   PARTYLINE_BIN=/path/to/partyline  -> `partyline dev --listen 127.0.0.1:0 --data-dir <tmp>`
//   REFERENCE=1 (or PARTYLINE_BIN unset) -> the reference @y/websocket-server 0.1.1
//
// Optional: PARTYLINE_EXTRA_ARGS="--foo bar" (split on whitespace, appended to the dev command),
//           KEEP_LOGS=1 (keep the tmp dir with the server log after a passing run).

import { spawn } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))

export const PARTYLINE_BIN = process.env.PARTYLINE_BIN || ''
export const isReference = process.env.REFERENCE === '1' || PARTYLINE_BIN === ''
export const isPartyline = !isReference

const READY_TIMEOUT_MS = 20_000
const STOP_TIMEOUT_MS = 15_000
const LISTEN_RE = /listening on ws:\/\/([0-9.]+:[0-9]+)/

export const freePort = () => new Promise((resolve, reject) => {
  const srv = net.createServer()
  srv.unref()
  srv.on('error', reject)
  srv.listen(0, '127.0.0.1', () => {
    const { port } = srv.address()
    srv.close(() => resolve(port))
  })
})

const tail = (file, lines = 60) => {
  try {
    const all = fs.readFileSync(file, 'utf8').split('\n')
    return all.slice(-lines).join('\n')
  } catch (e) {
    return `(no log: ${e.message})`
  }
}

export class ServerUnderTest {
  constructor ({ dataDir, tmpDir, extraArgs = [] }) {
    this.extraArgs = extraArgs
    this.tmpDir = tmpDir
    this.dataDir = dataDir
    this.logPath = path.join(tmpDir, 'server.log')
    this.child = null
    this.addr = null // "127.0.0.1:PORT"
    this.url = null // "ws://127.0.0.1:PORT"
    this.httpUrl = null
    this.exitInfo = null
    this.generation = 0
    this.kind = isReference ? 'reference' : 'partyline'
  }

  get host () { return this.addr.split(':')[0] }
  get port () { return Number(this.addr.split(':')[1]) }

  logTail (lines = 60) {
    const state = this.running ? `running (pid ${this.child.pid}, ${this.addr})` : `not running (last exit: ${JSON.stringify(this.exitInfo)})`
    return `---- ${this.kind} server, now ${state}; log ${this.logPath}, last ${lines} lines ----\n${tail(this.logPath, lines)}\n---- end of server log ----`
  }

  // port: listen on this port instead of a fresh one (e.g. to restart on the same address)
  async start ({ port = 0 } = {}) {
    if (this.child) throw new Error('server already running')
    this.generation++
    const log = fs.openSync(this.logPath, 'a')
    fs.writeSync(log, `\n==== start #${this.generation} (${this.kind}) at ${new Date().toISOString()} ====\n`)
    let cmd, args, env, matcher
    if (isReference) {
      if (!port) port = await freePort()
      const pkgDir = path.join(here, 'node_modules', '@y', 'websocket-server')
      const pkg = JSON.parse(fs.readFileSync(path.join(pkgDir, 'package.json'), 'utf8'))
      const bin = typeof pkg.bin === 'string' ? pkg.bin : (pkg.bin['y-websocket-server'] || Object.values(pkg.bin)[0])
      cmd = process.execPath
      args = [path.join(pkgDir, bin)]
      env = { ...process.env, HOST: '127.0.0.1', PORT: String(port) }
      delete env.YPERSISTENCE // in-memory only
      matcher = (line) => /running at/.test(line) ? `127.0.0.1:${port}` : null
    } else {
      cmd = PARTYLINE_BIN
      const extra = (process.env.PARTYLINE_EXTRA_ARGS || '').split(/\s+/).filter(Boolean)
      args = ['dev', '--listen', `127.0.0.1:${port}`, '--data-dir', this.dataDir, ...extra, ...this.extraArgs]
      env = { ...process.env }
      matcher = (line) => { const m = LISTEN_RE.exec(line); return m ? m[1] : null }
    }
    fs.writeSync(log, `$ ${cmd} ${args.join(' ')}\n`)
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'], cwd: this.tmpDir })
    this.child = child
    this.exitInfo = null
    const exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        this.exitInfo = { code, signal }
        try { fs.writeSync(log, `==== exit #${this.generation} at ${new Date().toISOString()}: code=${code} signal=${signal} ====\n`) } catch {}
        resolve({ code, signal })
      })
    })
    this._exited = exited
    child.on('error', (err) => {
      try { fs.writeSync(log, `spawn error: ${err.stack}\n`) } catch {}
    })
    child.stderr.on('data', (d) => { try { fs.writeSync(log, d) } catch {} })
    exited.then(() => setTimeout(() => { try { fs.closeSync(log) } catch {} }, 200))

    const addr = await new Promise((resolve, reject) => {
      let buf = ''
      let done = false
      const finish = (err, value) => {
        if (done) return
        done = true
        clearTimeout(timer)
        err ? reject(err) : resolve(value)
      }
      const timer = setTimeout(() => finish(new Error(`server did not print its listen address within ${READY_TIMEOUT_MS} ms\n${this.logTail()}`)), READY_TIMEOUT_MS)
      child.stdout.on('data', (d) => {
        try { fs.writeSync(log, d) } catch {}
        if (done) return
        buf += d.toString('utf8')
        let nl
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl)
          buf = buf.slice(nl + 1)
          const a = matcher(line)
          if (a) return finish(null, a)
        }
        const a = matcher(buf) // a line without newline yet
        if (a) finish(null, a)
      })
      child.on('error', (err) => finish(new Error(`could not start ${cmd}: ${err.message}`)))
      exited.then(({ code, signal }) => finish(new Error(`server exited before it was ready (code=${code} signal=${signal})\n${this.logTail()}`)))
    }).catch(async (err) => {
      if (this.child && this.exitInfo === null) {
        this.child.kill('SIGKILL')
        await exited
      }
      this.child = null
      throw err
    })
    this.addr = addr
    this.url = `ws://${addr}`
    this.httpUrl = `http://${addr}`
    return this
  }

  // Stops the server. signal 'SIGTERM' (graceful; partyline must exit with code 0) or 'SIGKILL'.
  // Returns { code, signal }.
  async stop (signal = 'SIGTERM') {
    const child = this.child
    if (!child) return this.exitInfo
    if (this.exitInfo === null) {
      try { fs.appendFileSync(this.logPath, `==== harness sends ${signal} at ${new Date().toISOString()} ====\n`) } catch {}
      child.kill(signal)
    } else {
      try { fs.appendFileSync(this.logPath, `==== harness stop(${signal}): server had already exited (${JSON.stringify(this.exitInfo)}) ====\n`) } catch {}
    }
    let timer
    const info = await Promise.race([
      this._exited,
      new Promise((resolve) => { timer = setTimeout(() => resolve(null), STOP_TIMEOUT_MS) })
    ])
    clearTimeout(timer)
    this.child = null
    if (info === null) {
      child.kill('SIGKILL')
      await this._exited
      throw new Error(`server did not exit within ${STOP_TIMEOUT_MS} ms of ${signal}\n${this.logTail()}`)
    }
    if (signal === 'SIGTERM' && isPartyline && info.code !== 0) {
      throw new Error(`partyline exited with code=${info.code} signal=${info.signal} after SIGTERM (expected code 0)\n${this.logTail()}`)
    }
    return info
  }

  // Stops (with the given signal) and starts again on the same data dir. The address changes
  // unless samePort is set.
  async restart (signal = 'SIGTERM', { samePort = false } = {}) {
    const port = samePort ? this.port : 0
    const info = await this.stop(signal)
    await this.start({ port })
    return info
  }

  // true while the process is alive
  get running () { return this.child !== null && this.exitInfo === null }

  cleanup (keep = false) {
    if (keep || process.env.KEEP_LOGS === '1') {
      console.error(`server tmp dir kept: ${this.tmpDir}`)
      return
    }
    try { fs.rmSync(this.tmpDir, { recursive: true, force: true }) } catch {}
  }
}

// extraArgs: more `partyline dev` flags (ignored by the reference server).
export const startServer = async ({ extraArgs = [] } = {}) => {
  const tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'partyline-js-'))
  const dataDir = path.join(tmpDir, 'data')
  fs.mkdirSync(dataDir)
  const server = new ServerUnderTest({ dataDir, tmpDir, extraArgs })
  try {
    await server.start()
  } catch (e) {
    server.cleanup(true)
    throw e
  }
  return server
}
