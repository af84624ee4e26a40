#!/usr/bin/env node
// Stages the npm packages of a release into folders ready for `npm pack` or
// `npm publish`, so the release workflow and a maintainer by hand run the
// same steps:
//
//   node npm/stage.mjs --main --version 0.1.0 --out DIR
//       -> DIR/partyline/            (the launcher; optionalDependencies on
//                                     every platform package at VERSION)
//   node npm/stage.mjs --target linux-x64 --binary PATH --version 0.1.0 --out DIR
//       -> DIR/cli-linux-x64/        (@partyline/cli-linux-x64 with PATH as
//                                     bin/partyline, os/cpu/libc set)
//
// Prints the staged folder. The platform list is npm/partyline/platforms.json,
// which the launcher reads too.
import { chmodSync, copyFileSync, cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));
const mainDir = join(here, 'partyline');
const platforms = JSON.parse(readFileSync(join(mainDir, 'platforms.json'), 'utf8'));
const template = JSON.parse(readFileSync(join(mainDir, 'package.json'), 'utf8'));

function usage(message) {
  process.stderr.write(
    `stage.mjs: ${message}\n` +
      'usage: stage.mjs --main --version V --out DIR\n' +
      '       stage.mjs --target KEY --binary PATH --version V --out DIR\n' +
      `KEY is one of: ${Object.keys(platforms).join(', ')}\n`,
  );
  process.exit(2);
}

const { values } = parseArgs({
  options: {
    main: { type: 'boolean', default: false },
    target: { type: 'string' },
    binary: { type: 'string' },
    version: { type: 'string' },
    out: { type: 'string' },
  },
});
if (!values.version || !/^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$/.test(values.version)) {
  usage('--version must be a semver version such as 0.1.0');
}
if (!values.out) usage('--out is required');
if (values.main === Boolean(values.target)) usage('give exactly one of --main and --target');

// npm checks a provenance statement against `repository`: in a GitHub
// workflow it must name the repository that runs it (a fork's included).
const repository = process.env.GITHUB_REPOSITORY || 'partyline/partyline';
const common = {
  version: values.version,
  license: template.license,
  repository: { type: 'git', url: `git+https://github.com/${repository}.git` },
};

function writeJson(file, value) {
  writeFileSync(file, `${JSON.stringify(value, null, 2)}\n`);
}

function fresh(dir) {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  return dir;
}

if (values.main) {
  const dir = fresh(join(values.out, 'partyline'));
  for (const file of template.files) cpSync(join(mainDir, file), join(dir, file));
  chmodSync(join(dir, 'bin/partyline.js'), 0o755);
  const optionalDependencies = Object.fromEntries(
    Object.keys(platforms).map((key) => [`@partyline/cli-${key}`, values.version]),
  );
  writeJson(join(dir, 'package.json'), { ...template, ...common, optionalDependencies });
  process.stdout.write(`${dir}\n`);
} else {
  const key = values.target;
  const platform = platforms[key];
  if (!platform) usage(`unknown target ${key}`);
  if (!values.binary) usage('--binary is required with --target');
  const dir = fresh(join(values.out, `cli-${key}`));
  mkdirSync(join(dir, 'bin'));
  const binary = join(dir, 'bin', platform.binary);
  copyFileSync(values.binary, binary);
  chmodSync(binary, 0o755);
  const name = `@partyline/cli-${key}`;
  writeJson(join(dir, 'package.json'), {
    name,
    ...common,
    description: `The ${platform.target} binary of partyline (installed by the partyline package)`,
    os: [platform.os],
    cpu: [platform.cpu],
    ...(platform.libc ? { libc: [platform.libc] } : {}),
    files: ['bin'],
    // Yarn PnP would otherwise keep the binary inside a zip archive.
    preferUnplugged: true,
  });
  writeFileSync(
    join(dir, 'README.md'),
    `# ${name}\n\nThe \`partyline\` binary for ${platform.target}. Install \`partyline\`, not this package: it picks the one for your platform.\n`,
  );
  process.stdout.write(`${dir}\n`);
}
