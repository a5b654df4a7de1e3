// ONNX Runtime (npm onnxruntime-node, its bundled CPU library) as the peer of cnclip-bench, for
// scripts/bench.sh. One JSON object on stdout; the best of the repeats, as cnclip-bench reports.
//
//   node bench_ort.mjs --ort DIR image MODEL.onnx --batch 4 --threads T --iters N [--size 224]
//       -> {"ms_per_image": ...}     one call of `batch` random images per repeat
//   node bench_ort.mjs --ort DIR text MODEL.onnx --length 15 --threads T --iters N
//       -> {"ms_per_query": ...}     one query of `length` tokens, new ids each repeat
//   node bench_ort.mjs --ort DIR check MODEL.onnx PREFIX --threads T
//       -> {"max_abs_diff": ..., "min_cosine": ...}  against PREFIX.in/.out/.json (bench_helper.py
//          onnx-export: the TorchScript tower's outputs for the same inputs)
//
// DIR is the folder where onnxruntime-node was installed (its node_modules). Sessions run as a user
// would set them up for speed: all graph optimizations, sequential execution, T intra-op threads.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import path from "node:path";

const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(name);
  if (i < 0) return dflt;
  const v = argv[i + 1];
  argv.splice(i, 2);
  return v;
};
const ortDir = opt("--ort", process.cwd());
const threads = Number(opt("--threads", "1"));
const iters = Number(opt("--iters", "3"));
const batch = Number(opt("--batch", "4"));
const length = Number(opt("--length", "15"));
const size = Number(opt("--size", "224"));
const [mode, modelPath, prefix] = argv;
if (!["image", "text", "check"].includes(mode) || !modelPath) {
  console.error("usage: bench_ort.mjs --ort DIR image|text|check MODEL.onnx [PREFIX] [--threads T --iters N ...]");
  process.exit(2);
}
const ort = createRequire(path.join(path.resolve(ortDir), "package.json"))("onnxruntime-node");

const session = await ort.InferenceSession.create(modelPath, {
  executionProviders: ["cpu"],
  graphOptimizationLevel: "all",
  executionMode: "sequential",
  intraOpNumThreads: threads,
  interOpNumThreads: 1,
});
const inputName = session.inputNames[0];
const outputName = session.outputNames[0];
const now = () => Number(process.hrtime.bigint()) / 1e6;

// xorshift: reproducible inputs without a dependency
let seed = 12345;
const rand = () => {
  seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5;
  return (seed >>> 0) / 4294967296;
};

async function best(makeFeeds) {
  await session.run(makeFeeds(-1));  // warm-up
  let bestMs = Infinity;
  for (let i = 0; i < iters; i++) {
    const feeds = makeFeeds(i);
    const t0 = now();
    await session.run(feeds);
    bestMs = Math.min(bestMs, now() - t0);
  }
  return bestMs;
}

const out = { runtime: `onnxruntime-node ${ort.env.versions?.common ?? ""}`.trim(), threads };
if (mode === "image") {
  const data = new Float32Array(batch * 3 * size * size);
  for (let i = 0; i < data.length; i++) data[i] = (rand() + rand() + rand() - 1.5) * 2;
  const tensor = new ort.Tensor("float32", data, [batch, 3, size, size]);
  const ms = await best(() => ({ [inputName]: tensor }));
  Object.assign(out, { batch, ms_per_image: ms / batch });
} else if (mode === "text") {
  const makeIds = () => {
    const ids = new BigInt64Array(length);
    ids[0] = 101n;  // [CLS]
    for (let i = 1; i < length - 1; i++) ids[i] = BigInt(1000 + Math.floor(rand() * 19000));
    ids[length - 1] = 102n;  // [SEP]
    return { [inputName]: new ort.Tensor("int64", ids, [1, length]) };
  };
  const ms = await best(makeIds);
  Object.assign(out, { length, ms_per_query: ms });
} else {
  const meta = JSON.parse(readFileSync(prefix + ".json", "utf8"));
  const raw = readFileSync(prefix + ".in");
  const buf = raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength);
  const input = meta.dtype === "int64" ? new BigInt64Array(buf) : new Float32Array(buf);
  const res = await session.run({ [inputName]: new ort.Tensor(meta.dtype, input, meta.shape) });
  const got = res[outputName].data;
  const rawOut = readFileSync(prefix + ".out");
  const want = new Float32Array(rawOut.buffer.slice(rawOut.byteOffset, rawOut.byteOffset + rawOut.byteLength));
  if (got.length !== want.length) {
    console.error(`bench_ort: ${modelPath}: output has ${got.length} values, the TorchScript tower ${want.length}`);
    process.exit(1);
  }
  const dim = meta.out_shape[1];
  let maxDiff = 0, minCos = 1;
  for (let r = 0; r < want.length / dim; r++) {
    let dot = 0, na = 0, nb = 0;
    for (let d = r * dim; d < (r + 1) * dim; d++) {
      maxDiff = Math.max(maxDiff, Math.abs(got[d] - want[d]));
      dot += got[d] * want[d]; na += got[d] * got[d]; nb += want[d] * want[d];
    }
    minCos = Math.min(minCos, dot / Math.sqrt(na * nb));
  }
  Object.assign(out, { max_abs_diff: maxDiff, min_cosine: minCos });
}
console.log(JSON.stringify(out));
