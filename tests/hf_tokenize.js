// tests/hf_tokenize.js: GPT-2's tokenizer as Hugging Face's Rust `tokenizers` library builds it (the npm
// package `tokenizers`): byte-level BPE from vocab.json and merges.txt, no prefix space, the byte-level
// post-processor (which adds no token), and <|endoftext|> an added special token that text is split on.
// A test tool for tests/make_e2e_fixtures.py, never run by fedex or its tests.
//
// usage: NODE_PATH=DIR/node_modules node tests/hf_tokenize.js MODEL_DIR < lines
//   each input line a JSON object {"text": S} or {"text": S, "pair": S2}; each output line {"ids": [...]}.
// Install the package outside the repository's tracked files, e.g.
//   npm install --prefix build/hf-tools tokenizers@0.23.2
const tk = require('tokenizers');
const readline = require('readline');

async function main() {
  const dir = process.argv[2];
  const model = await tk.BPE.fromFile(dir + '/vocab.json', dir + '/merges.txt');
  const tok = new tk.Tokenizer(model);
  tok.setPreTokenizer(tk.byteLevelPreTokenizer(false, true));
  tok.setPostProcessor(tk.byteLevelProcessing(true));
  tok.addAddedTokens([new tk.AddedToken('<|endoftext|>', true, { normalized: true })]);
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of rl) {
    if (!line) continue;
    const q = JSON.parse(line);
    const e = await tok.encode(q.text, q.pair === undefined ? null : q.pair, { addSpecialTokens: true });
    process.stdout.write(JSON.stringify({ ids: e.getIds() }) + '\n');
  }
}
main().catch((e) => { console.error(e); process.exit(1); });
