#!/usr/bin/env node
// The `partyline` command of the npm package: finds the native binary of
// this platform (one optional dependency per platform, as esbuild and Biome
// ship theirs) and runs it.
//
// The binary runs as a child started with an asynchronous spawn, never
// spawnSync: a supervisor (npm-run-all, concurrently, a terminal) signals
// this process, which must pass the signal on and wait, or the server would
// be left running as an orphan. Exit code and signal are the child's.
//
// Some runners do not pass signals on: npm-run-all2's run-p dies of a
// SIGINT or SIGTERM sent to it alone and leaves its tasks running. So the
// launcher also watches the processes between itself and the leader of its
// process group (the job a shell or supervisor started) and stops the
// server when one of them is gone: the job it belonged to was torn down.
'use strict';

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const PLATFORMS = require('../platforms.json');
const FORWARDED_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'];
const ORPHAN_CHECK_MS = 250;

function fail(message) {
  process.stderr.write(`partyline: ${message}\n`);
  process.exit(1);
}

// musl systems (Alpine) carry the musl dynamic loader in /lib; reading one
// directory is cheaper than process.report (tens of milliseconds).
function isMusl() {
  try {
    return fs.readdirSync('/lib').some((name) => name.startsWith('ld-musl-'));
  } catch {
    return false;
  }
}

// Package keys to try, best first. A static musl build also runs on glibc,
// so each Linux libc falls back to the other's package.
function candidateKeys() {
  const base = `${process.platform}-${process.arch}`;
  if (process.platform !== 'linux') return [base];
  return isMusl() ? [`${base}-musl`, base] : [base, `${base}-musl`];
}

function findBinary() {
  const override = process.env.PARTYLINE_BINARY;
  if (override) {
    if (!fs.existsSync(override)) {
      fail(`PARTYLINE_BINARY is set to ${override}, which does not exist.`);
    }
    return override;
  }
  const keys = candidateKeys().filter((key) => PLATFORMS[key]);
  for (const key of keys) {
    let manifest;
    try {
      manifest = require.resolve(`@partyline/cli-${key}/package.json`);
    } catch {
      continue;
    }
    const binary = path.join(path.dirname(manifest), 'bin', PLATFORMS[key].binary);
    if (fs.existsSync(binary)) return binary;
  }
  const wanted = keys.length > 0 ? `@partyline/cli-${keys[0]}` : null;
  const alternatives = [
    '  - cargo install --locked --git https://github.com/partyline/partyline partyline',
    '  - the container image ghcr.io/partyline/partyline (docker run -p 1999:1999 ghcr.io/partyline/partyline dev --host 0.0.0.0)',
    '  - PARTYLINE_BINARY=/path/to/partyline to use a binary you built or downloaded',
  ].join('\n');
  if (wanted) {
    fail(
      `the native binary for ${process.platform}-${process.arch} was not found: ` +
        `the package ${wanted} is not installed.\n` +
        'npm installs it as an optional dependency of partyline; it is skipped with ' +
        '--omit=optional / --no-optional, or when the lock file was made on another platform. ' +
        `Reinstall (npm install partyline) or install ${wanted} next to it, or use:\n${alternatives}`,
    );
  }
  fail(
    `there is no prebuilt binary for ${process.platform}-${process.arch} ` +
      `(prebuilt: ${Object.keys(PLATFORMS).join(', ')}). Use:\n${alternatives}`,
  );
}

// pid, parent pid and process group of `pid`, or null when unknown.
function procStat(pid) {
  try {
    // Fields after the command name, which may itself hold spaces and ')'.
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { pid, ppid: Number(fields[1]), pgid: Number(fields[2]) };
  } catch {
    return null;
  }
}

// The processes from our parent up to our process group's leader, read
// once at start. Only where /proc exists (Linux); elsewhere the launcher
// relies on the signals it is sent.
function jobAncestors() {
  const self = procStat(process.pid);
  if (!self || self.pgid === self.pid) return [];
  const ancestors = [];
  let pid = self.ppid;
  while (pid > 1 && ancestors.length < 64) {
    const stat = procStat(pid);
    if (!stat || stat.pgid !== self.pgid) break;
    ancestors.push(pid);
    if (pid === stat.pgid) break;
    pid = stat.ppid;
  }
  return ancestors;
}

function isAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return error.code === 'EPERM';
  }
}

// Calls `onOrphaned` once when a process of our job exits before us.
function watchJob(onOrphaned) {
  const ancestors = jobAncestors();
  if (ancestors.length === 0) return;
  const timer = setInterval(() => {
    if (ancestors.every(isAlive)) return;
    clearInterval(timer);
    onOrphaned();
  }, ORPHAN_CHECK_MS);
  timer.unref();
}

function run() {
  const binary = findBinary();
  const child = spawn(binary, process.argv.slice(2), { stdio: 'inherit' });

  const forward = (signal) => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
  };
  for (const signal of FORWARDED_SIGNALS) process.on(signal, forward);
  watchJob(() => forward('SIGTERM'));

  child.on('error', (error) => {
    fail(`cannot start ${binary}: ${error.message}`);
  });
  child.on('exit', (code, signal) => {
    if (signal) {
      // Die of the same signal, so whoever waits on us sees what the
      // server died of; the exit code covers platforms that cannot.
      for (const s of FORWARDED_SIGNALS) process.removeListener(s, forward);
      process.kill(process.pid, signal);
      process.exit(128 + (os.constants.signals[signal] || 0));
    }
    process.exit(code ?? 1);
  });
}

run();
