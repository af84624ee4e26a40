// What the browser tests need around them: the example app installed into
// a temporary directory from the npm tarballs, its processes (each npm
// script in a process group of its own, so stopping one stops everything it
// started), the partyline binary among them, headless Chromium, and a
// screenshot of every page at the end of each test.
import { execFile, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import puppeteer from 'puppeteer-core'

const execFileP = promisify(execFile)
const HERE = path.dirname(fileURLToPath(import.meta.url))
export const REPO = path.resolve(HERE, '../..')
export const EXAMPLE = path.join(REPO, 'examples/partykit-app')
export const OUTPUT = path.join(HERE, 'output')
export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const PARTYLINE_BIN =
  process.env.PARTYLINE_BIN ?? path.join(os.homedir(), '.cache/partyline/target/debug/partyline')

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Polls `fn` until it returns a truthy value (returned) or `timeoutMs` runs
 * out (throws). An error thrown by `fn` counts as "not yet", unless it is
 * marked `fatal`.
 */
export async function waitFor(what, fn, { timeoutMs = 10_000, intervalMs = 100 } = {}) {
  const deadline = Date.now() + timeoutMs
  let last
  for (;;) {
    try {
      const value = await fn()
      if (value) return value
    } catch (error) {
      if (error.fatal) throw error
      last = error
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last.message}` : ''}`)
    }
    await sleep(intervalMs)
  }
}

export function log(line) {
  process.stderr.write(`[browser-tests] ${line}\n`)
}

async function run(command, args, options = {}) {
  const { timeoutMs = 300_000, ...rest } = options
  try {
    return await execFileP(command, args, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024, ...rest })
  } catch (error) {
    throw new Error(`${command} ${args.join(' ')} failed: ${error.message}\n${error.stdout ?? ''}\n${error.stderr ?? ''}`)
  }
}

/** Free TCP ports on loopback (v4 and v6 both free, since partyline binds both). */
export async function freePorts(count) {
  const ports = new Set()
  while (ports.size < count) {
    const port = await new Promise((resolve, reject) => {
      const server = net.createServer()
      server.on('error', reject)
      server.listen(0, '127.0.0.1', () => {
        const { port } = server.address()
        server.close(() => resolve(port))
      })
    })
    if (port < 10_000 || ports.has(port)) continue
    const v6Free = await new Promise((resolve) => {
      const server = net.createServer()
      server.on('error', (error) => resolve(error.code === 'EADDRNOTAVAIL'))
      server.listen(port, '::1', () => server.close(() => resolve(true)))
    })
    if (v6Free) ports.add(port)
  }
  return [...ports]
}

/**
 * The two tarballs of the npm package: from $PARTYLINE_NPM_TARBALLS (the
 * suite builds them once), else made here with scripts/package-npm.sh from
 * the debug binary ($PARTYLINE_BIN).
 */
export async function npmTarballs(workDir) {
  let dir = process.env.PARTYLINE_NPM_TARBALLS
  if (!dir) {
    dir = path.join(workDir, 'tarballs')
    // The debug binary is rebuilt from time to time; wait for it briefly.
    await waitFor(`the partyline binary at ${PARTYLINE_BIN}`, () => fs.existsSync(PARTYLINE_BIN), {
      timeoutMs: 120_000,
      intervalMs: 1000,
    })
    await run('bash', [path.join(REPO, 'scripts/package-npm.sh'), dir, PARTYLINE_BIN], { timeoutMs: 300_000 })
  }
  const files = fs.readdirSync(dir)
  const platform = files.find((name) => /^partyline-cli-linux-x64-.*\.tgz$/.test(name))
  const main = files.find((name) => /^partyline-\d.*\.tgz$/.test(name))
  if (!platform || !main) throw new Error(`no partyline tarballs in ${dir}: ${files.join(', ')}`)
  return [path.join(dir, platform), path.join(dir, main)]
}

/**
 * A copy of examples/partykit-app (no node_modules, data or build output)
 * with its dependencies installed and the npm package of Partyline from
 * the tarballs. The example has no lock file (it pins its direct
 * dependencies exactly); npm resolves the rest here.
 */
export async function installApp({ workDir, permissions, apiPort }) {
  const appDir = path.join(workDir, 'app')
  const skip = new Set(['node_modules', '.partyline', 'dist', path.join('data', 'backups')])
  fs.cpSync(EXAMPLE, appDir, {
    recursive: true,
    filter: (source) => !skip.has(path.relative(EXAMPLE, source)),
  })
  fs.writeFileSync(path.join(appDir, 'data/permissions.json'), JSON.stringify(permissions, null, 2))
  const tarballs = await npmTarballs(workDir)
  const started = Date.now()
  await run('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error', ...tarballs], {
    cwd: appDir,
    timeoutMs: 300_000,
  })
  log(`npm install of the example app: ${Date.now() - started} ms`)
  // dev:party names the backend's URLs with the fixed port 8788; this copy
  // runs the backend on a free port, so its URLs change with it.
  const devParty = JSON.parse(fs.readFileSync(path.join(appDir, 'package.json'), 'utf8')).scripts['dev:party']
  const rewritten = devParty.replaceAll('localhost:8788/', `localhost:${apiPort}/`)
  if (rewritten === devParty) throw new Error(`dev:party does not name localhost:8788: ${devParty}`)
  await run('npm', ['pkg', 'set', `scripts.dev:party=${rewritten}`], { cwd: appDir })
  return appDir
}

/** The partyline binary the app's npm package installed. */
export function installedBinary(appDir) {
  return fs.realpathSync(path.join(appDir, 'node_modules/@partyline/cli-linux-x64/bin/partyline'))
}

/** Process ids running `binary` (found by /proc/PID/exe). */
export function pidsOf(binary) {
  const pids = []
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      if (fs.readlinkSync(`/proc/${entry}/exe`) === binary) pids.push(Number(entry))
    } catch {
      // gone, or not ours to read
    }
  }
  return pids
}

/**
 * The test's environment without what would change how the app runs
 * (PARTYLINE_* settings such as PARTYLINE_GATEWAY_LISTEN or
 * PARTYLINE_BINARY, HOST, the ports, VITE_PARTY_HOST): the test passes its own.
 */
function inheritedEnv() {
  const dropped = new Set(['HOST', 'PORT', 'WEB_PORT', 'API_PORT', 'VITE_PARTY_HOST'])
  return Object.fromEntries(
    Object.entries(process.env).filter(([key]) => !key.startsWith('PARTYLINE_') && !dropped.has(key)),
  )
}

const groups = new Set()
process.on('exit', () => {
  for (const group of groups) {
    try {
      process.kill(-group.pid, 'SIGKILL')
    } catch {}
  }
})

/**
 * `npm run SCRIPT` in its own process group (detached), output appended to
 * `logFile`. stop() signals the whole group.
 */
export function startScript({ appDir, script, env, logFile }) {
  const out = fs.openSync(logFile, 'a')
  fs.writeSync(out, `\n=== ${new Date().toISOString()} npm run ${script}\n`)
  const child = spawn('npm', ['run', script], {
    cwd: appDir,
    env: { ...inheritedEnv(), ...env },
    detached: true,
    stdio: ['ignore', out, out],
  })
  fs.closeSync(out)
  const group = {
    script,
    pid: child.pid,
    exitCode: undefined,
    exited: new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        group.exitCode = code ?? signal
        groups.delete(group)
        resolve(group.exitCode)
      })
    }),
    async stop(signal = 'SIGTERM', graceMs = 5000) {
      if (group.exitCode !== undefined) return group.exitCode
      try {
        process.kill(-group.pid, signal)
      } catch {}
      const code = await Promise.race([group.exited, sleep(graceMs).then(() => 'timeout')])
      if (code === 'timeout') {
        log(`npm run ${script} did not stop within ${graceMs} ms of ${signal}; SIGKILL`)
        try {
          process.kill(-group.pid, 'SIGKILL')
        } catch {}
        return group.exited
      }
      return code
    },
  }
  groups.add(group)
  return group
}

async function httpOk(url) {
  const response = await fetch(url, { signal: AbortSignal.timeout(2000) })
  return response.ok
}

export const waitHttp = (what, url, timeoutMs = 30_000, group) =>
  waitFor(
    what,
    async () => {
      if (group && group.exitCode !== undefined) {
        throw Object.assign(new Error(`npm run ${group.script} exited (${group.exitCode})`), { fatal: true })
      }
      return httpOk(url)
    },
    { timeoutMs, intervalMs: 200 },
  )

export const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
]

export async function launchBrowser() {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: apt-get install chromium (scripts/test.sh does)`)
  }
  return puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    protocolTimeout: 30_000,
  })
}

export const slug = (name) =>
  name
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-|-$/g, '')
    .slice(0, 80)

/**
 * The pages of one test: one browser context per user (cookies, storage and
 * BroadcastChannel kept apart, as two people's browsers), a screenshot and
 * the console output of each page in output/<test>/ when the test ends,
 * whether it passed or not.
 */
export class Scene {
  constructor(browser, webUrl, testName) {
    this.browser = browser
    this.webUrl = webUrl
    this.dir = path.join(OUTPUT, slug(testName))
    this.pages = []
    fs.mkdirSync(this.dir, { recursive: true })
  }

  /** Opens `?user=USER#ROOM` in a fresh context; waits until the app runs. */
  async open(user, room, { label = `${user}-${room}`, waitSynced = true } = {}) {
    const context = await this.browser.createBrowserContext()
    const page = await context.newPage()
    await page.setViewport({ width: 1400, height: 1000 })
    const entry = { label, user, room, context, page, console: [] }
    this.pages.push(entry)
    page.on('console', (message) => entry.console.push(`${message.type()}: ${message.text()}`))
    page.on('pageerror', (error) => entry.console.push(`pageerror: ${error.message}`))
    const started = Date.now()
    await page.goto(`${this.webUrl}/?user=${encodeURIComponent(user)}#${encodeURIComponent(room)}`, {
      waitUntil: 'load',
      timeout: 30_000,
    })
    await page.waitForFunction(() => window.__app !== undefined, { timeout: 15_000 })
    if (waitSynced) {
      await page.waitForFunction(() => window.__app.status === 'connected' && window.__app.synced, {
        timeout: 15_000,
        polling: 50,
      })
    }
    if (Date.now() - started > 3000) log(`${label}: the page took ${Date.now() - started} ms to open`)
    return page
  }

  async snap(entry, suffix = '') {
    if (entry.page.isClosed()) return
    await entry.page.screenshot({ path: path.join(this.dir, `${entry.label}${suffix}.png`) }).catch(() => {})
  }

  /** Screenshots (taken before the tab closes) then closes the tab of `page`. */
  async closeTab(page) {
    const entry = this.pages.find((candidate) => candidate.page === page)
    if (entry) await this.snap(entry, '-before-close')
    await page.close()
  }

  async finish() {
    for (const entry of this.pages) {
      await this.snap(entry)
      fs.writeFileSync(path.join(this.dir, `${entry.label}.console.log`), entry.console.join('\n') + '\n')
      await entry.context.close().catch(() => {})
    }
  }
}

export const randomSecret = () => randomBytes(24).toString('hex')
