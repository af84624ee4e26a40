// The npm distribution (npm/, scripts/package-npm.sh): the tarballs install
// into an empty project, `npx partyline dev` serves, the launcher finds the
// binary (or says clearly why not), and a runner's signals stop the server
// through it without leaving a process behind.
//
// Uses the tarballs in PARTYLINE_NPM_TARBALLS (scripts/test.sh makes them
// once from the debug binary) or packs PARTYLINE_BIN itself.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { Y, WebSocket, WebsocketProvider, waitFor, sleep } from './helpers.mjs'
import { freePort, PARTYLINE_BIN } from './server.mjs'

const here = path.dirname(fileURLToPath(import.meta.url))
const repo = path.resolve(here, '../..')
const runP = path.join(here, 'node_modules/.bin/run-p')
const STOP_BUDGET_MS = 2000

let work, tarballs, project, installedBinary
const children = new Set()

const npmInstall = (dir, args) =>
  execFileSync('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error', ...args], {
    cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], timeout: 180_000
  })

const newProject = (name) => {
  const dir = path.join(work, name)
  fs.mkdirSync(dir)
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name, version: '1.0.0', private: true }))
  return dir
}

before(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'partyline-npm-'))
  tarballs = process.env.PARTYLINE_NPM_TARBALLS
  if (!tarballs) {
    assert.ok(PARTYLINE_BIN, 'PARTYLINE_BIN or PARTYLINE_NPM_TARBALLS must be set')
    tarballs = path.join(work, 'tarballs')
    execFileSync(path.join(repo, 'scripts/package-npm.sh'), [tarballs, PARTYLINE_BIN], { stdio: 'pipe' })
  }
  project = newProject('app')
  npmInstall(project, fs.readdirSync(tarballs).filter((f) => f.endsWith('.tgz')).map((f) => path.join(tarballs, f)))
  installedBinary = fs.realpathSync(path.join(project, 'node_modules/@partyline/cli-linux-x64/bin/partyline'))
})

after(() => {
  for (const child of children) {
    try { process.kill(-child.pid, 'SIGKILL') } catch {}
  }
  fs.rmSync(work, { recursive: true, force: true })
})

// Starts `command` in its own process group (so a test can signal one
// process of it, or all, and nothing outlives the test).
const start = (command, args, { env = {}, cwd = project } = {}) => {
  const child = spawn(command, args, {
    cwd, detached: true, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe']
  })
  child.output = ''
  child.stdout.on('data', (d) => { child.output += d })
  child.stderr.on('data', (d) => { child.output += d })
  child.exited = new Promise((resolve) => child.on('exit', (code, signal) => {
    children.delete(child)
    resolve({ code, signal })
  }))
  children.add(child)
  return child
}

const healthy = async (port) => {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/healthz`)
    return res.status === 200
  } catch {
    return false
  }
}

const waitHealthy = (port, child) =>
  waitFor(() => healthy(port), { timeout: 20_000, what: () => `/healthz on ${port}\n${child.output}` })

// Live (not zombie) processes running the installed partyline binary.
const serverPids = () => fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p)).filter((pid) => {
  try {
    if (fs.readlinkSync(`/proc/${pid}/exe`) !== installedBinary) return false
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z'
  } catch {
    return false
  }
})

// Signals `child` (npx: npm passes the signal on and then dies of it
// itself) and waits until no partyline server is left.
const stopAndWait = async (child, signal = 'SIGTERM') => {
  child.kill(signal)
  await child.exited
  await waitFor(() => serverPids().length === 0, { timeout: STOP_BUDGET_MS, what: 'the server to stop' })
}

test('the tarballs install into an empty project and `npx partyline dev --port N` serves', async () => {
  const bin = path.join(project, 'node_modules/.bin/partyline')
  assert.ok(fs.existsSync(bin), 'node_modules/.bin/partyline is installed')
  const version = execFileSync('npx', ['partyline', '--version'], { cwd: project }).toString()
  assert.match(version, /^partyline \d+\.\d+\.\d+/)
  const port = await freePort()
  const server = start('npx', ['partyline', 'dev', '--port', String(port), '--data-dir', path.join(work, 'data-flag')])
  await waitHealthy(port, server)
  assert.match(server.output, new RegExp(`ws://localhost:${port}`), 'the banner names the URL')
  await stopAndWait(server)
})

test('`PORT=N npx partyline dev` serves on N', async () => {
  const port = await freePort()
  const server = start('npx', ['partyline', 'dev', '--data-dir', path.join(work, 'data-env')], { env: { PORT: String(port) } })
  await waitHealthy(port, server)
  await stopAndWait(server)
})

for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  test(`${signal} to the launcher stops the server gracefully and the launcher exits 0`, async () => {
    const port = await freePort()
    const launcher = path.join(project, 'node_modules/partyline/bin/partyline.js')
    const run = start(process.execPath, [launcher, 'dev', '--port', String(port), '--data-dir', path.join(work, `data-${signal}`)])
    await waitHealthy(port, run)
    run.kill(signal)
    assert.deepEqual(await run.exited, { code: 0, signal: null })
    assert.match(run.output, new RegExp(`${signal}: shutting down`))
    assert.deepEqual(serverPids(), [])
  })
}

test('PARTYLINE_BINARY overrides the lookup; arguments and exit code pass through', async () => {
  const fake = path.join(work, 'fake-partyline')
  const argsFile = path.join(work, 'fake-args')
  fs.writeFileSync(fake, `#!/bin/sh\necho "$@" > '${argsFile}'\nexit 7\n`, { mode: 0o755 })
  const run = start('npx', ['partyline', 'dev', '--port', '1'], { env: { PARTYLINE_BINARY: fake } })
  assert.deepEqual(await run.exited, { code: 7, signal: null })
  assert.equal(fs.readFileSync(argsFile, 'utf8'), 'dev --port 1\n')

  const missing = start('npx', ['partyline', 'dev'], { env: { PARTYLINE_BINARY: path.join(work, 'nowhere') } })
  assert.equal((await missing.exited).code, 1)
  assert.match(missing.output, /PARTYLINE_BINARY is set to .*nowhere, which does not exist/)
})

test('the launcher dies of the signal that ended the server', async () => {
  const fake = path.join(work, 'self-terminating')
  fs.writeFileSync(fake, '#!/bin/sh\nkill -TERM $$\n', { mode: 0o755 })
  const launcher = path.join(project, 'node_modules/partyline/bin/partyline.js')
  const run = start(process.execPath, [launcher], { env: { PARTYLINE_BINARY: fake } })
  assert.deepEqual(await run.exited, { code: null, signal: 'SIGTERM' })
})

test('without the platform package the launcher names it and the alternatives', async () => {
  const bare = newProject('bare')
  const main = fs.readdirSync(tarballs).find((f) => /^partyline-\d.*\.tgz$/.test(f))
  npmInstall(bare, ['--omit=optional', path.join(tarballs, main)])
  assert.ok(!fs.existsSync(path.join(bare, 'node_modules/@partyline')), 'no platform package installed')
  const run = start('npx', ['partyline', 'dev'], { cwd: bare })
  const { code } = await run.exited
  assert.equal(code, 1)
  assert.match(run.output, /the package @partyline\/cli-linux-x64 is not installed/)
  assert.match(run.output, /cargo install --locked/)
  assert.match(run.output, /ghcr\.io\/partyline\/partyline/)
  assert.match(run.output, /PARTYLINE_BINARY/)
})

// Writes `text` into `room` and waits for the server's echo of it to be
// acknowledged (a second client sees it).
const writeText = async (port, room, text) => {
  const docs = [new Y.Doc(), new Y.Doc()]
  const providers = docs.map((doc) => new WebsocketProvider(`ws://127.0.0.1:${port}`, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true }))
  try {
    await waitFor(() => providers.every((p) => p.synced), { timeout: 10_000, what: 'providers synced' })
    docs[0].getText('text').insert(0, text)
    await waitFor(() => docs[1].getText('text').toString() === text, { timeout: 10_000, what: 'the edit echoed' })
  } finally {
    // The provider, then the doc: the doc's awareness runs a timer.
    providers.forEach((p) => p.destroy())
    docs.forEach((doc) => doc.destroy())
  }
}

const readText = async (port, room) => {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(`ws://127.0.0.1:${port}`, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
  try {
    await waitFor(() => provider.synced, { timeout: 10_000, what: 'provider synced' })
    return doc.getText('text').toString()
  } finally {
    provider.destroy()
    doc.destroy()
  }
}

for (const [signal, target] of [['SIGINT', 'runner'], ['SIGTERM', 'runner'], ['SIGINT', 'process group (Ctrl-C)']]) {
  test(`under run-p, ${signal} to the ${target} stops partyline within ${STOP_BUDGET_MS} ms and a restart has the room`, async () => {
    const port = await freePort()
    const data = path.join(work, `data-run-p-${signal}-${target.split(' ')[0]}`)
    execFileSync('npm', ['pkg', 'set', `scripts.party=partyline dev --port ${port} --data-dir ${data}`], { cwd: project })
    const runner = start(runP, ['party'])
    await waitHealthy(port, runner)
    const [server] = serverPids()
    assert.ok(server, 'the partyline binary runs')
    const room = `run-p-${signal.toLowerCase()}`
    await writeText(port, room, `written before ${signal}`)

    const sent = Date.now()
    process.kill(target === 'runner' ? runner.pid : -runner.pid, signal)
    await waitFor(() => serverPids().length === 0, {
      timeout: STOP_BUDGET_MS, interval: 10, what: () => `partyline to stop after ${signal}\n${runner.output}`
    })
    const took = Date.now() - sent
    await sleep(200)
    const left = fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p)).filter((pid) => {
      try { return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(`--port\0${port}`) } catch { return false }
    })
    assert.deepEqual(left, [], 'no launcher, shell or server of the task is left')
    console.log(`# ${signal} to the ${target}: partyline gone ${took} ms after the signal`)

    const again = start('npx', ['partyline', 'dev', '--port', String(port), '--data-dir', data])
    await waitHealthy(port, again)
    assert.equal(await readText(port, room), `written before ${signal}`)
    await stopAndWait(again)
  })
}
