// The example app (examples/partykit-app) in headless Chromium, started by
// its own `npm run dev` (run-p: Vite, the Node backend, and `partyline dev`
// from the npm package installed from the tarballs of scripts/package-npm.sh).
//
// Ports: the app's copy gets free ports through the environment it reads
// (PORT for partyline, WEB_PORT for Vite, API_PORT for the backend), and its
// dev:party script, whose webhook URLs name the backend's port 8788, is
// rewritten with `npm pkg set` (harness.mjs, installApp).
//
// Restarts: killing the partyline binary under `npm run dev` would take
// Vite and the backend down with it (run-p stops every task once one exits
// with an error, and a SIGKILLed launcher does), and the open pages with
// them. So the restart tests stop `npm run dev` and start the app's three
// scripts (dev:web, dev:api, dev:party) each in its own process group: the
// partyline binary is then signalled alone and dev:party started again.
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { createHmac } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'
import * as Y from 'yjs'
import {
  OUTPUT,
  Scene,
  freePorts,
  installApp,
  installedBinary,
  launchBrowser,
  log,
  pidsOf,
  randomSecret,
  sleep,
  startScript,
  waitFor,
  waitHttp,
} from './harness.mjs'

const execFileP = promisify(execFile)
const RW = 'read-write'
const RO = 'read-only'
/** The test's own permissions file (the example ships a demo one). */
const PERMISSIONS = {
  users: {
    alice: { name: 'Alice', color: '#e5484d' },
    bob: { name: 'Bob', color: '#3e63dd' },
    carol: { name: 'Carol', color: '#30a46c' },
    mallory: { name: 'Mallory', color: '#f76b15' },
  },
  workspaces: {
    design: { name: 'Design', members: { alice: RW, bob: RW, carol: RO } },
    board: { name: 'Board', members: { alice: RW } },
  },
  documents: {
    1: { title: 'Concurrent editing', members: { alice: RW, bob: RW } },
    2: { title: "Alice's secret", members: { alice: RW } },
    3: { title: 'Read-only member', members: { alice: RW, bob: RW, carol: RO } },
    4: { title: 'Backup', members: { alice: RW } },
    5: { title: 'SIGTERM', members: { alice: RW, bob: RW, carol: RO } },
    6: { title: 'SIGKILL', members: { alice: RW, carol: RO } },
  },
  diagrams: {
    1: { title: 'Concurrent diagram', workspace: 'design' },
    2: { title: 'Backup diagram', workspace: 'design' },
    9: { title: 'Board only', workspace: 'board' },
  },
}

const secret = `whsec_${Buffer.from(randomSecret()).toString('base64')}`
let workDir
let appDir
let binary
let browser
let ports
let env
let webUrl
let apiUrl
let failed = false
/** Process groups of the running app: {dev} or {web, api, party}. */
const running = {}
const devLog = path.join(OUTPUT, 'dev.log')

/** A hook whose failure keeps the app copy too. */
const noting = (fn) => async (...args) => {
  try {
    return await fn(...args)
  } catch (error) {
    failed = true
    throw error
  }
}

/** node:test's context does not say whether a test failed; this does. */
function browserTest(name, fn, timeout = 60_000) {
  test(name, { timeout }, async (t) => {
    const scene = new Scene(browser, webUrl, name)
    try {
      await fn(scene, t)
    } catch (error) {
      failed = true
      throw error
    } finally {
      await scene.finish()
    }
  })
}

before(
  noting(async () => {
    fs.rmSync(OUTPUT, { recursive: true, force: true })
    fs.mkdirSync(OUTPUT, { recursive: true })
    workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'partyline-browser-'))
    const [partyPort, webPort, apiPort] = await freePorts(3)
    ports = { partyPort, webPort, apiPort }
    webUrl = `http://localhost:${webPort}`
    apiUrl = `http://127.0.0.1:${apiPort}`
    appDir = await installApp({ workDir, permissions: PERMISSIONS, apiPort })
    binary = installedBinary(appDir)
    env = {
      PORT: String(partyPort),
      WEB_PORT: String(webPort),
      API_PORT: String(apiPort),
      // partyline signs its callbacks with it, the backend checks them.
      PARTYLINE_WEBHOOKS_SECRET: secret,
    }
    running.dev = startScript({ appDir, script: 'dev', env, logFile: devLog })
    const started = Date.now()
    await Promise.all([
      waitHttp('partyline', `http://127.0.0.1:${partyPort}/healthz`, 30_000, running.dev),
      waitHttp('the backend', `${apiUrl}/healthz`, 30_000, running.dev),
      waitHttp('vite', `${webUrl}/`, 30_000, running.dev),
    ])
    log(`npm run dev ready in ${Date.now() - started} ms (app in ${appDir})`)
    browser = await launchBrowser()
  }),
  { timeout: 600_000 },
)

after(async () => {
  await browser?.close().catch(() => {})
  for (const group of Object.values(running)) await group.stop('SIGTERM')
  if (binary) {
    const left = await waitFor('no partyline process left', () => pidsOf(binary).length === 0, {
      timeoutMs: 5000,
    }).catch(() => false)
    if (!left) {
      for (const pid of pidsOf(binary)) process.kill(pid, 'SIGKILL')
      log('a partyline process was left running after its npm script stopped; killed')
    }
  }
  if (!workDir) return
  if (failed || process.env.KEEP_APP) {
    log(`kept the app copy (with .partyline/ and data/backups/) in ${workDir}; dev log: ${devLog}`)
  } else {
    fs.rmSync(workDir, { recursive: true, force: true })
  }
})

// --- page helpers -------------------------------------------------------------

const textOf = (page) => page.evaluate(() => document.querySelector('textarea')?.value ?? null)
const ytextOf = (page) => page.evaluate(() => window.__app.doc.getText('content').toString())
const statusOf = (page) => page.evaluate(() => window.__app.status)
const loadIdOf = (page) => page.evaluate(() => performance.timeOrigin)
/**
 * Shapes as sorted [id, shape] pairs with sorted keys: Y.Map order differs
 * between replicas, and the key order inside a value does too once the
 * server (yrs keeps JSON objects as hash maps) has encoded it again.
 */
const canonicalShapes = (json) =>
  Object.entries(json)
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([id, shape]) => [id, Object.fromEntries(Object.entries(shape).sort(([a], [b]) => (a < b ? -1 : 1)))])
const shapesOf = async (page) => canonicalShapes(await page.evaluate(() => window.__app.doc.getMap('shapes').toJSON()))
/** The rectangles the page shows, as sorted [id, {x, y}] pairs. */
const drawnShapesOf = (page) =>
  page.evaluate(() =>
    [...document.querySelectorAll('rect.shape')]
      .map((rect) => [rect.dataset.id, { x: Number(rect.getAttribute('x')), y: Number(rect.getAttribute('y')) }])
      .sort(([a], [b]) => (a < b ? -1 : 1)),
  )

const waitText = (page, fragment, timeout = 5000) =>
  page.waitForFunction((text) => document.querySelector('textarea')?.value.includes(text), { timeout, polling: 20 }, fragment)

async function typeAt(page, where, text, delay = 15) {
  await page.focus('textarea')
  await page.keyboard.down('Control')
  await page.keyboard.press(where === 'start' ? 'Home' : 'End')
  await page.keyboard.up('Control')
  await page.keyboard.type(text, { delay })
}

/** A point inside shape `id` where it is the topmost element, in page coordinates. */
const grabPoint = (page, id) =>
  page.evaluate((shapeId) => {
    const rect = document.querySelector(`rect.shape[data-id="${CSS.escape(shapeId)}"]`)
    const box = rect.getBoundingClientRect()
    for (let fy = 0.5; fy < 1; fy += 0.1) {
      for (let fx = 0.5; fx < 1; fx += 0.1) {
        for (const [x, y] of [
          [box.left + box.width * fx, box.top + box.height * fy],
          [box.left + box.width * (1 - fx), box.top + box.height * (1 - fy)],
        ]) {
          if (document.elementFromPoint(x, y) === rect) return { x: Math.round(x), y: Math.round(y) }
        }
      }
    }
    return null
  }, id)

async function drag(page, from, dx, dy) {
  await page.mouse.move(from.x, from.y)
  await page.mouse.down()
  await page.mouse.move(from.x + dx, from.y + dy, { steps: 12 })
  await page.mouse.up()
}

/** The diagram's coordinates of a page point (the SVG is drawn 1:1). */
const diagramPoint = (page, x, y) =>
  page.evaluate(
    (px, py) => {
      const box = document.querySelector('.diagram svg').getBoundingClientRect()
      return { x: Math.round(px - box.left), y: Math.round(py - box.top) }
    },
    x,
    y,
  )

async function svgOrigin(page) {
  return page.evaluate(() => {
    const box = document.querySelector('.diagram svg').getBoundingClientRect()
    return { x: box.left, y: box.top }
  })
}

async function backup(room) {
  const response = await fetch(`${apiUrl}/partyline/backup/${encodeURIComponent(room)}`)
  if (response.status === 404) return null
  assert.equal(response.status, 200)
  return response.json()
}

function decodeState(record) {
  const doc = new Y.Doc()
  Y.applyUpdate(doc, Buffer.from(record.state, 'base64'))
  return doc
}

// --- tests ----------------------------------------------------------------------

test('the example app type-checks (npm run typecheck)', { timeout: 60_000 }, async () => {
  try {
    await execFileP('npm', ['run', '--silent', 'typecheck'], { cwd: appDir, timeout: 60_000 })
  } catch (error) {
    failed = true
    throw new Error(`${error.message}\n${error.stdout ?? ''}${error.stderr ?? ''}`)
  }
})

browserTest('two users edit the same document concurrently and converge', async (scene) => {
  const alice = await scene.open('alice', 'doc-1')
  const bob = await scene.open('bob', 'doc-1')
  await typeAt(alice, 'end', 'The middle line.')
  await waitText(bob, 'The middle line.')

  // Both type at once, at both ends of the text.
  await Promise.all([
    typeAt(alice, 'start', 'Alice was here first. '),
    typeAt(bob, 'end', ' Bob wrote the ending.'),
  ])
  const expected = 'Alice was here first. The middle line. Bob wrote the ending.'
  await waitFor('both pages to show the same text', async () => {
    const [a, b] = await Promise.all([textOf(alice), textOf(bob)])
    return a === expected && b === expected
  }, { timeoutMs: 5000 })
  // The textarea shows exactly the shared Y.Text on both.
  assert.equal(await ytextOf(alice), expected)
  assert.equal(await ytextOf(bob), expected)

  // And once more in the same spot: the characters interleave, but both
  // pages end with the same text holding every character typed.
  await Promise.all([typeAt(alice, 'end', ' xyz', 25), typeAt(bob, 'end', ' 123', 25)])
  await waitFor('both pages to converge after typing in one spot', async () => {
    const [a, b, ya, yb] = await Promise.all([textOf(alice), textOf(bob), ytextOf(alice), ytextOf(bob)])
    return a === b && ya === a && yb === b && a.length === expected.length + 8
  }, { timeoutMs: 5000 })
  const final = await textOf(alice)
  assert.ok(final.startsWith(expected), final)
  assert.deepEqual([...final.slice(expected.length)].sort(), [...' xyz 123'].sort())
})

browserTest('two users edit the same diagram concurrently and converge', async (scene) => {
  const alice = await scene.open('alice', 'diagram-1')
  const bob = await scene.open('bob', 'diagram-1')
  const clickAdd = async (page, times) => {
    for (let i = 0; i < times; i++) {
      await page.click('button.add-shape')
      await sleep(30)
    }
  }
  await Promise.all([clickAdd(alice, 3), clickAdd(bob, 3)])
  await waitFor('six shapes on both pages', async () => {
    const [a, b] = await Promise.all([shapesOf(alice), shapesOf(bob)])
    return a.length === 6 && JSON.stringify(a) === JSON.stringify(b)
  }, { timeoutMs: 5000 })

  const ids = (await shapesOf(alice)).map(([id]) => id)
  const aliceClient = await alice.evaluate(() => window.__app.doc.clientID.toString(36))
  const mine = (client) => ids.filter((id) => id.startsWith(`${client}-`))
  const bobClient = await bob.evaluate(() => window.__app.doc.clientID.toString(36))
  assert.equal(mine(aliceClient).length, 3)
  assert.equal(mine(bobClient).length, 3)

  // The first of `candidates` that shows a point to grab on both pages
  // (shapes land at random places and may hide each other).
  const grabbable = async (candidates) => {
    for (const id of candidates) {
      const [a, b] = [await grabPoint(alice, id), await grabPoint(bob, id)]
      if (a && b) return { id, a, b }
    }
    assert.fail(`none of ${candidates} can be grabbed`)
  }
  // Each drags one of their own shapes, at the same time.
  const before = Object.fromEntries(await shapesOf(alice))
  const aliceShape = await grabbable(mine(aliceClient))
  const bobShape = await grabbable(mine(bobClient))
  await Promise.all([drag(alice, aliceShape.a, 300, 120), drag(bob, bobShape.b, 200, 260)])
  // Both drag the same shape to different places at the same time.
  const contested = await grabbable(ids.filter((id) => id !== aliceShape.id && id !== bobShape.id))
  await Promise.all([drag(alice, contested.a, 100, 200), drag(bob, contested.b, 420, 30)])

  let final
  await waitFor('both diagrams to converge', async () => {
    const [a, b, da, db] = await Promise.all([shapesOf(alice), shapesOf(bob), drawnShapesOf(alice), drawnShapesOf(bob)])
    const drawn = JSON.stringify(a.map(([id, s]) => [id, { x: s.x, y: s.y }]))
    final = Object.fromEntries(a)
    return JSON.stringify(a) === JSON.stringify(b) && JSON.stringify(da) === drawn && JSON.stringify(db) === drawn
  }, { timeoutMs: 5000 })
  const clamp = (shape, dx, dy) => [Math.min(800 - shape.w, shape.x + dx), Math.min(500 - shape.h, shape.y + dy)]
  const at = (id) => [final[id].x, final[id].y]
  assert.deepEqual(at(aliceShape.id), clamp(before[aliceShape.id], 300, 120))
  assert.deepEqual(at(bobShape.id), clamp(before[bobShape.id], 200, 260))
  const outcomes = [clamp(before[contested.id], 100, 200), clamp(before[contested.id], 420, 30)].map(String)
  assert.ok(outcomes.includes(String(at(contested.id))), `one of the two moves wins: ${at(contested.id)} in ${outcomes.join(' | ')}`)
})

browserTest('each user sees the other’s cursor within 1 s of a move, and it is gone within 3 s of closing the tab', async (scene) => {
  // The diagram: pointers.
  const alice = await scene.open('alice', 'diagram-1')
  const bob = await scene.open('bob', 'diagram-1')
  const pointerSeen = (page, user, at) =>
    page.waitForFunction(
      (who, x, y) => {
        const g = document.querySelector(`.remote-pointer[data-user="${who}"]`)
        return g && Number(g.dataset.x) === x && Number(g.dataset.y) === y
      },
      { timeout: 1000, polling: 10 },
      user,
      at.x,
      at.y,
    )
  const latencies = []
  for (const [mover, watcher, who] of [[bob, alice, 'bob'], [alice, bob, 'alice'], [bob, alice, 'bob']]) {
    const origin = await svgOrigin(mover)
    const target = { x: Math.round(origin.x) + 150 + latencies.length * 97, y: Math.round(origin.y) + 120 + latencies.length * 41 }
    const expected = await diagramPoint(mover, target.x, target.y)
    const t0 = Date.now()
    await mover.mouse.move(target.x, target.y, { steps: 3 })
    await pointerSeen(watcher, who, expected)
    latencies.push(Date.now() - t0)
  }
  log(`pointer latencies (ms): ${latencies.join(', ')}`)
  assert.ok(latencies.every((ms) => ms < 1000), String(latencies))
  // The presence list names the other user too.
  await alice.waitForSelector('#presence li[data-user="bob"]', { timeout: 1000 })

  let t0 = Date.now()
  await scene.closeTab(bob)
  await alice.waitForFunction(
    () => !document.querySelector('.remote-pointer[data-user="bob"]') && !document.querySelector('#presence li[data-user="bob"]'),
    { timeout: 3000, polling: 20 },
  )
  const pointerGone = Date.now() - t0

  // The text: carets.
  const aliceText = await scene.open('alice', 'doc-1', { label: 'alice-doc-1' })
  const bobText = await scene.open('bob', 'doc-1', { label: 'bob-doc-1' })
  const caretLatencies = []
  for (const keys of [['Home'], ['ArrowRight', 'ArrowRight', 'ArrowRight'], ['End']]) {
    await bobText.focus('textarea')
    const t1 = Date.now()
    for (const key of keys) await bobText.keyboard.press(key)
    const index = await bobText.evaluate(() => document.querySelector('textarea').selectionStart)
    await aliceText.waitForFunction(
      (i) => document.querySelector(`.remote-caret[data-user="bob"]`)?.dataset.index === String(i),
      { timeout: 1000, polling: 10 },
      index,
    )
    caretLatencies.push(Date.now() - t1)
  }
  // And the other way round.
  await aliceText.focus('textarea')
  let t1 = Date.now()
  await aliceText.keyboard.press('Home')
  await bobText.waitForFunction(() => document.querySelector('.remote-caret[data-user="alice"]')?.dataset.index === '0', {
    timeout: 1000,
    polling: 10,
  })
  caretLatencies.push(Date.now() - t1)
  log(`caret latencies (ms): ${caretLatencies.join(', ')}`)
  assert.ok(caretLatencies.every((ms) => ms < 1000), String(caretLatencies))

  t0 = Date.now()
  await scene.closeTab(bobText)
  await aliceText.waitForFunction(() => !document.querySelector('.remote-caret[data-user="bob"]'), { timeout: 3000, polling: 20 })
  const caretGone = Date.now() - t0
  log(`gone after closing the tab (ms): pointer ${pointerGone}, caret ${caretGone}`)
  assert.ok(pointerGone < 3000 && caretGone < 3000)
})

browserTest('a user without access sees "access denied" and never receives the content', async (scene) => {
  const secretText = `the launch date is ${randomSecret().slice(0, 8)}`
  const alice = await scene.open('alice', 'doc-2')
  await typeAt(alice, 'end', secretText, 2)
  const aliceDiagram = await scene.open('alice', 'diagram-9', { label: 'alice-diagram-9' })
  await aliceDiagram.click('button.add-shape')
  await aliceDiagram.waitForFunction(() => window.__app.doc.getMap('shapes').size === 1, { timeout: 2000 })

  // A known user who is no member (bob), and one who is no member of anything
  // (mallory); a document and a diagram of another workspace.
  for (const [user, room] of [['mallory', 'doc-2'], ['bob', 'doc-2'], ['mallory', 'diagram-9'], ['bob', 'diagram-9']]) {
    const page = await scene.open(user, room, { waitSynced: false })
    await page.waitForFunction(() => document.querySelector('#status')?.textContent === 'access denied', {
      timeout: 10_000,
      polling: 50,
    })
    const visible = await page.evaluate(() => document.body.innerText)
    assert.match(visible, /access denied/)
    // Give a late byte every chance to arrive, then look again.
    await sleep(300)
    const seen = await page.evaluate(() => ({
      everConnected: window.__app.everConnected,
      // Structs of any client: none at all in an empty Y.Doc.
      clients: window.__app.doc.store.clients.size,
      shares: [...window.__app.doc.share.keys()],
      text: document.body.innerText,
      textarea: document.querySelector('textarea') !== null,
    }))
    assert.equal(seen.everConnected, false, `${user} never had an open socket to ${room}`)
    assert.equal(seen.clients, 0, `${user}'s Y.Doc of ${room} is empty`)
    assert.equal(seen.textarea, false)
    assert.ok(!seen.text.includes(secretText))
  }
  // Partyline asked the app's backend, which refused.
  const devOutput = fs.readFileSync(devLog, 'utf8')
  assert.match(devOutput, /auth doc-2 token="mallory" → 403/)
  assert.match(devOutput, /auth diagram-9 token="bob" → 403/)
})

browserTest('a read-only member sees live edits, and its own edits reach nobody', async (scene) => {
  const alice = await scene.open('alice', 'doc-3')
  const carol = await scene.open('carol', 'doc-3')
  assert.equal(await carol.evaluate(() => document.querySelector('#status').textContent), 'connected · read-only')

  await typeAt(alice, 'end', 'Written by Alice.')
  await waitText(carol, 'Written by Alice.', 3000)

  // The editor does not let Carol type…
  await carol.focus('textarea')
  await carol.keyboard.type('typed by carol')
  assert.equal(await textOf(carol), 'Written by Alice.')
  // …and an edit that gets past it (a tampered page) is refused by the server.
  await carol.evaluate(() => window.__app.doc.getText('content').insert(0, 'SNEAKED IN BY CAROL. '))
  await carol.waitForFunction(() => window.__app.denials.length > 0, { timeout: 3000, polling: 20 })
  const denial = await carol.evaluate(() => window.__app.denials[0])
  assert.match(denial, /read-only/)
  assert.match(await carol.$eval('#notice', (el) => el.textContent), /not saved/)

  // Alice keeps writing: Carol still sees it live, Alice never sees Carol's edit.
  await typeAt(alice, 'end', ' And more.')
  await waitText(carol, 'And more.', 3000)
  await sleep(500)
  assert.equal(await textOf(alice), 'Written by Alice. And more.')
  // Nor does anyone who opens the document now.
  const bob = await scene.open('bob', 'doc-3')
  assert.equal(await textOf(bob), 'Written by Alice. And more.')
  // Nor the backup.
  const record = await waitFor('the backup of doc-3 with Alice’s last edit', async () => {
    const found = await backup('doc-3')
    return found && found.data?.content === 'Written by Alice. And more.' ? found : null
  }, { timeoutMs: 12_000, intervalMs: 250 })
  assert.equal(decodeState(record).getText('content').toString(), 'Written by Alice. And more.')
})

browserTest('the backup endpoint holds the latest state within 10 s of the last edit', async (scene) => {
  const alice = await scene.open('alice', 'doc-4')
  const bob = await scene.open('bob', 'diagram-2')
  await typeAt(alice, 'end', 'First burst. ', 5)
  await bob.click('button.add-shape')
  await sleep(700)
  await typeAt(alice, 'end', 'Second burst.', 5)
  await bob.click('button.add-shape')
  const grab = await grabPoint(bob, (await shapesOf(bob))[0][0])
  await drag(bob, grab, 60, 40)
  const lastEdit = Date.now()
  const text = await ytextOf(alice)
  const shapes = await shapesOf(bob)

  const [textRecord, diagramRecord] = await Promise.all([
    waitFor('the backup of doc-4', async () => {
      const found = await backup('doc-4')
      return found && decodeState(found).getText('content').toString() === text ? found : null
    }, { timeoutMs: 10_000 - (Date.now() - lastEdit), intervalMs: 200 }),
    waitFor('the backup of diagram-2', async () => {
      const found = await backup('diagram-2')
      if (!found) return null
      const decoded = canonicalShapes(decodeState(found).getMap('shapes').toJSON())
      return JSON.stringify(decoded) === JSON.stringify(shapes) ? found : null
    }, { timeoutMs: 10_000 - (Date.now() - lastEdit), intervalMs: 200 }),
  ])
  log(`backups complete ${Date.now() - lastEdit} ms after the last edit`)
  assert.equal(textRecord.data.content, text)
  assert.ok(Number.isInteger(textRecord.epoch) && textRecord.taken_unix_ms >= lastEdit - 60_000)
  assert.equal(Object.keys(diagramRecord.data.shapes).length, 2)

  // The backend checks callbacks: unsigned or forged ones are refused, an
  // older state never replaces a newer one.
  const post = (body, signature) =>
    fetch(`${apiUrl}/partyline/backup`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(signature ?? {}) },
      body,
    })
  const sign = (body, t = Math.floor(Date.now() / 1000)) => {
    const id = `msg_${randomSecret().slice(0, 12)}`
    const key = Buffer.from(secret.slice('whsec_'.length), 'base64')
    const mac = createHmac('sha256', key).update(`${id}.${t}.${body}`).digest('base64')
    return { 'webhook-id': id, 'webhook-timestamp': String(t), 'webhook-signature': `v1,${mac}` }
  }
  const fake = (epoch, taken, content) => {
    const doc = new Y.Doc()
    doc.getText('content').insert(0, content)
    return JSON.stringify({
      room: 'doc-4',
      epoch,
      taken_unix_ms: taken,
      state: Buffer.from(Y.encodeStateAsUpdate(doc)).toString('base64'),
      data: { content },
    })
  }
  const forged = fake(textRecord.epoch + 1, Date.now(), 'forged')
  assert.equal((await post(forged)).status, 401)
  assert.equal((await post(forged, sign(fake(textRecord.epoch + 1, Date.now(), 'other')))).status, 401)
  assert.equal((await post(forged, sign(forged, Math.floor(Date.now() / 1000) - 3600))).status, 401)
  const older = fake(textRecord.epoch, textRecord.taken_unix_ms - 1, 'older')
  const response = await post(older, sign(older))
  assert.equal(response.status, 200)
  assert.deepEqual(await response.json(), { kept: false })
  assert.equal((await backup('doc-4')).data.content, text)
})

describe('partyline restarts', () => {
  /** The partyline binary's one process. */
  const partylinePid = () => {
    const pids = pidsOf(binary)
    assert.equal(pids.length, 1, `one partyline process (${pids})`)
    return pids[0]
  }
  async function startParty() {
    running.party = startScript({ appDir, script: 'dev:party', env, logFile: devLog })
    await waitHttp('partyline', `http://127.0.0.1:${ports.partyPort}/healthz`, 30_000, running.party)
  }
  async function waitPartyGone() {
    const code = await Promise.race([running.party.exited, sleep(10_000).then(() => 'still running')])
    assert.notEqual(code, 'still running', 'npm run dev:party ends with its partyline')
    await waitFor('the old partyline to be gone', () => pidsOf(binary).length === 0, { timeoutMs: 5000 })
    return code
  }
  const reconnected = (page, timeout = 15_000) =>
    page.waitForFunction(() => window.__app.status === 'connected' && window.__app.synced, { timeout, polling: 50 })

  before(noting(async () => {
    // See the top of the file: the three parts, each in its own group.
    await running.dev.stop('SIGTERM')
    delete running.dev
    await waitFor('npm run dev to stop partyline', () => pidsOf(binary).length === 0, { timeoutMs: 5000 })
    running.web = startScript({ appDir, script: 'dev:web', env, logFile: devLog })
    running.api = startScript({ appDir, script: 'dev:api', env, logFile: devLog })
    await Promise.all([
      waitHttp('the backend', `${apiUrl}/healthz`, 30_000, running.api),
      waitHttp('vite', `${webUrl}/`, 30_000, running.web),
      startParty(),
    ])
  }), { timeout: 60_000 })

  browserTest('SIGTERM: the open pages reconnect by themselves and nothing is lost', async (scene) => {
    const alice = await scene.open('alice', 'doc-5')
    const bob = await scene.open('bob', 'doc-5')
    const loads = [await loadIdOf(alice), await loadIdOf(bob)]
    await typeAt(alice, 'end', 'Before the restart.')
    await waitText(bob, 'Before the restart.')

    process.kill(partylinePid(), 'SIGTERM')
    const code = await waitPartyGone()
    assert.equal(code, 0, 'partyline (and its launcher) exit 0 on SIGTERM')
    await waitFor('both pages to notice', async () => (await statusOf(alice)) !== 'connected' && (await statusOf(bob)) !== 'connected', {
      timeoutMs: 5000,
    })
    // Both keep editing while the server is away.
    await typeAt(alice, 'end', ' Alice, offline.')
    await typeAt(bob, 'start', 'Bob, offline. ')
    await scene.snap(scene.pages[0], '-offline')

    await startParty()
    await Promise.all([reconnected(alice), reconnected(bob)])
    const expected = 'Bob, offline. Before the restart. Alice, offline.'
    await waitFor('both pages to converge after the restart', async () => {
      const [a, b] = await Promise.all([textOf(alice), textOf(bob)])
      return a === expected && b === expected
    }, { timeoutMs: 5000 })
    assert.deepEqual([await loadIdOf(alice), await loadIdOf(bob)], loads, 'no page was reloaded')
    // Live again, and a newcomer gets everything from the server.
    await typeAt(alice, 'end', ' Back.')
    await waitText(bob, 'Back.', 3000)
    const carol = await scene.open('carol', 'doc-5')
    assert.equal(await textOf(carol), `${expected} Back.`)
  })

  browserTest('SIGKILL right after an edit another browser displayed: the open pages reconnect and nothing is lost', async (scene) => {
    const alice = await scene.open('alice', 'doc-6')
    // Carol only reads: her page cannot give the server back what it lost.
    const carol = await scene.open('carol', 'doc-6')
    const carolLoad = await loadIdOf(carol)
    await typeAt(alice, 'end', 'Written before the crash. ')
    await waitText(carol, 'Written before the crash.')

    const marker = `kill-${randomSecret().slice(0, 6)}`
    await typeAt(alice, 'end', marker, 5)
    await carol.waitForFunction((m) => document.querySelector('textarea').value.includes(m), { timeout: 5000, polling: 5 }, marker)
    const displayedAt = Date.now()
    process.kill(partylinePid(), 'SIGKILL')
    log(`SIGKILL ${Date.now() - displayedAt} ms after Carol's page displayed the edit`)
    // The writer leaves while the server is down: from now on only the
    // server can still hold her last edit.
    await scene.closeTab(alice)
    await waitPartyGone()
    await waitFor('Carol’s page to notice', async () => (await statusOf(carol)) !== 'connected', { timeoutMs: 5000 })

    await startParty()
    await reconnected(carol)
    assert.equal(await loadIdOf(carol), carolLoad, 'Carol’s page was not reloaded')
    const expected = `Written before the crash. ${marker}`
    assert.equal(await textOf(carol), expected)
    const aliceAgain = await scene.open('alice', 'doc-6', { label: 'alice-again' })
    assert.equal(await textOf(aliceAgain), expected, 'the server kept the edit')
    await typeAt(aliceAgain, 'end', ' After the crash.')
    await waitText(carol, 'After the crash.', 3000)
  })
})
