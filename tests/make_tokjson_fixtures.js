// tests/make_tokjson_fixtures.js: tokenizer.json folders and golden cases for tokenizer.c, from Hugging
// Face's Rust `tokenizers` library (the npm package). Three small byte-level BPE tokenizers cut from GPT-2's
// vocabulary (../shared/models/gpt2: the first N merges, their tokens, and for llama3 a few hundred whole
// words whose merges are left out, so that only ignore_merges can give them as one token):
//   tests/fixtures/tokjson/llama3: Llama-3's layout: the Split pre-tokenizer with Llama-3's pattern then
//       ByteLevel (use_regex false), ignore_merges, merges as "a b" strings, <|begin_of_text|> added by a
//       TemplateProcessing inside a Sequence post-processor, Llama-3's special tokens plus tokens with
//       lstrip / rstrip, non-special ones (normalized or not); tokenizer_config.json names bos and eos.
//   tests/fixtures/tokjson/gpt2: GPT-2's layout (ByteLevel pre-tokenizer, <|endoftext|>), written back
//       by the library itself (its own merges format); bos and eos from config.json.
//   tests/fixtures/tokjson/roberta: RoBERTa's (RobertaProcessing, <mask> with lstrip), written back too.
// tests/fixtures/tokjson_cases.jsonl: for each tokenizer, GLUE and E2E text from ../shared, hand-written
// tricky strings and random ones: the library's ids with and without special tokens, its pre-tokens, and
// its decoding; and decodings of random ids.
//
// usage (from the repository root; the package outside the tracked files):
//   npm install --prefix build/hf-tools tokenizers@0.23.2
//   NODE_PATH=build/hf-tools/node_modules node tests/make_tokjson_fixtures.js [SHARED_DIR]
//
// Each line of tokjson_cases.jsonl is one JSON object with "tok" (the folder's name) and either
//   "text" (and "pair"): "ids" = encode(text, pair, add_special_tokens true); for hand-written and
//       random strings also "plain" = the same without special tokens, "pieces" (the pre-tokenizer's
//       output, as bytes in GPT-2's characters) and "dec" = decode(ids, false);
//       "dec_plain" = decode(plain, false) and "dec_skip" = decode(ids, true), each left out when it
//       equals text;
//   or "decode": ids, "skip": 0/1, "dec": decode(ids, skip).
const tk = require('tokenizers');
const fs = require('fs');

const shared = process.argv[2] || '../shared';
const OUT = 'tests/fixtures/tokjson';

// ---------------------------------------------------------------------------------------------------
// a deterministic random source (mulberry32)
let seed = 20241202;
function rnd() {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = (a) => a[Math.floor(rnd() * a.length)];
const randint = (lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1));

// ---------------------------------------------------------------------------------------------------
// text
function tsvColumn(path, col, skipHeader, max) {
  const lines = fs.readFileSync(path, 'utf8').split('\n').filter((l) => l.length);
  return lines.slice(skipHeader ? 1 : 0).map((l) => l.split('\t')[col]).filter((s) => s !== undefined).slice(0, max);
}
function csvRows(path, max) { // E2E's two quoted columns
  const out = [];
  const lines = fs.readFileSync(path, 'utf8').split('\n').slice(1);
  for (const l of lines) {
    const m = /^"((?:[^"]|"")*)","((?:[^"]|"")*)"$/.exec(l.replace(/\r$/, ''));
    if (m) out.push([m[1].replace(/""/g, '"'), m[2].replace(/""/g, '"')]);
    if (out.length >= max) break;
  }
  return out;
}

const SPACES = '\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a' +
  '\u2028\u2029\u202f\u205f\u3000';
const NOT_SPACES = '\x1c\x1d\x1e\x1f\u180e\u200b\ufeff';
const HAND = [
  '', ' ', '  ', 'a', ' a', '  a', 'a ', 'a  ', '\ta', ' \ta', '\t a', 'a\t\tb', 'a \n b', '\n\n\nx', 'x\n\n\n',
  "I'm you're we've they'll he'd it's don't", "I'M YOU'RE WE'VE THEY'LL HE'D IT'S DON'T", "It'S wE'Ve tHey'lL",
  "'s", "''s", "'s's", " 's", "'x", "'", "''", "a's", "?'s", "'ll've", "'re'", "'\u2019s", 'it\u2019s', "'\u017f",
  "'\ufb06", "'\u212a", "O'Neil's", "rock'n'roll", "'S'T'RE'VE'M'LL'D",
  'hello world', 'Hello, World!!', 'x = 3.14e-10;', 'e-mail: a@b.c', '$100,000.00', '50%', '1st 2nd 3rd',
  '1', '12', '123', '1234', '12345', '123456', '1234567', '3.14159265358979', '2024-12-02T04:05:06Z',
  'abc123def', '123abc', '12 345', ' 1 2', '\u0663\u0664\u0665\u0666 \u0966\u0967 \uff11\uff12\uff13\uff14',
  'x\u00b2 + y\u00b3', '\u00bd \u2153 \u2155', '\u2160\u2161\u2162 \u216b',
  'e\u0301 caf\u00e9 cafe\u0301', '\u0301a', ' \u0301', 'a\u0301\u0302\u0303b', '\u0915\u094d\u0937',
  '\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22', '\u0627\u0644\u0639\u0631\u0628\u064a\u0629', '\u05e9\u05dc\u05d5\u05dd',
  '\u4f60\u597d\uff0c\u4e16\u754c\u3002', '\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8', '\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8',
  '\u{1f600}', ' \u{1f600}\u{1f601}', '\u{1f468}\u200d\u{1f469}\u200d\u{1f467}', '\u{1f44d}\u{1f3fd}', '\u{1f1eb}\u{1f1f7}',
  'a\u{1f600}b', '\u2764\ufe0f', '\u00a9 \u00ae \u2122', '\u2200x\u2208\u211d: x\u00b2\u22650', '\u{20000}\u{2a6d6}',
  '\ue000\uf8ff', '\u{f0000}', '\u{10ffff}', '\uffff\ufffe', '\ufffd', '\u0378\u0379',
  '\x01\x02\x7f', '\u0085x', 'x\u0085', 'a\u00a0b', ' \u00a0b', '\u00a0\u00a0b', 'a\u3000\u3000b',
  '\u2028\u2029', '\ufeffhello', 'hello\ufeff', 'a\x1cb\x1dc\x1e d\x1f', 'a\u200bb', '\u180e',
  '   leading and trailing   ', 'tabs\tand\nnewlines\r\n', '\r\n\r\n', '   \t  x', 'a\r\n\r\n  b', 'a \r\n b',
  'end.\r\n', 'x!!\n\ny', ' !\r\r\n', '(paren) [bracket] {brace}', '\t\tindented\n\t\tcode();\n',
  'line one\nline two\n\nline four', 'trailing spaces   \n   next', '\r', '\n', ' \n', '\n ', '\u00a0\n',
  'CamelCaseWord snake_case_word kebab-case-word', '__init__', '#include <stdio.h>', '<html><body>x</body></html>',
  '\u02b0\u02b1 \u3005 \u3031', '\u01c5\u01c8', '\u2070\u2074', '\u2460\u2461', '\u1d2c\u1d2d',
  'Ab'.repeat(60), 'a'.repeat(300), '!'.repeat(50) + '?'.repeat(50), ' '.repeat(40) + 'x', '\u{1f600}'.repeat(30),
  '9'.repeat(40), ' '.repeat(20) + '\n'.repeat(5),
];
// Special and added tokens written in text (the llama3 set; the others have their own)
const SPECIAL_TEXT = [
  '<|begin_of_text|>Hello', 'Hello<|end_of_text|>', '<|begin_of_text|><|begin_of_text|>',
  '<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>',
  'a <|eot_id|> b', 'a<|eot_id|>b', '  <|eot_id|>  ', '<|eot_id', '<|eot_id|', '|eot_id|>', '<<|eot_id|>>',
  '<|reserved_special_token_0|><|reserved_special_token_1|>', '<|reserved_special_token_10|>',
  'x <|lstrip|> y', 'x\t\n <|lstrip|>y', '<|lstrip|>', '  <|lstrip|>  <|lstrip|>', 'x<|lstrip|>',
  'x <|rstrip|> y', 'x<|rstrip|> \n\ty', '<|rstrip|>   ', '<|rstrip|> <|rstrip|> z', 'a <|rstrip|> <|lstrip|> b',
  'x\u3000<|lstrip|>\u00a0y', 'x\u00a0<|rstrip|>\u2003y', 'x\x1c<|lstrip|>', '<|rstrip|>\x1cy',
  '[[x]]', 'a[[x]]b', ' [[x]] ', '[[x]][[x]]', '[[x', 'aqq<|eot_id|>', 'qq<', 'qq<qq<', 'qq<|eot',
  '\u00fcn\u00ef', 'x\u00fcn\u00efy', '\u4e2d\u6587', '\u6211\u8bf4\u4e2d\u6587', ' \u4e2d\u6587 ',
  "<|begin_of_text|>I'M <|eot_id|>'s", '<|EOT_ID|>', '<|eot_id|>\r\n\r\n',
];

// The classes fedex's tables give (Unicode 15.0, tests/fixtures/tok_classes.txt); Hugging Face's Oniguruma
// knows later characters as letters and numbers, which fedex does not claim to: random text avoids the
// code points where this Node's Unicode (newer) and those tables disagree.
const py15 = new Uint8Array(0x110000);
for (const l of fs.readFileSync('tests/fixtures/tok_classes.txt', 'utf8').split('\n')) {
  const f = l.split(' ');
  if (l[0] === '#' || f.length !== 3) continue;
  py15.fill(+f[2], parseInt(f[0], 16), parseInt(f[1], 16) + 1);
}
function nodeClass(c) {
  const ch = String.fromCodePoint(c);
  return /\p{L}/u.test(ch) ? 1 : /\p{N}/u.test(ch) ? 2 : /\p{White_Space}/u.test(ch) ? 3 : 0;
}
let skipped = 0;
for (let c = 0; c < 0x110000; c++) if ((c < 0xd800 || c >= 0xe000) && nodeClass(c) !== py15[c]) skipped++;

function randText() {
  const pool = [
    'abcxyzABC', '0123456789', ' ', '  \t\n', '\r\n', SPACES, NOT_SPACES, "'srtvemldSRTVEMLD", '.,!?;:-()[]"\'',
    '\u00e9\u00fc\u00f1\u00df\u0107', '\u0301\u0308\u0323', '\u0663\u0966\uff11\u2162\u00b2\u00bd',
    '\u4e00\u4e8c\u4e09\u3042\u30a2\uac00', '\u{1f600}\u{1f44d}\u{1f3fd}\u200d\u2764\ufe0f',
    '\u0627\u05d0\u0e01\u0915\u094d', '\u20ac\u00a3\u00a5\u00a9\u2122\u2200', '\x01\x1f\x7f\u0085',
  ];
  const n = randint(1, 40);
  let s = '';
  for (let i = 0; i < n; i++) {
    if (rnd() < 0.08) { // any code point, surrogates excepted
      let c = randint(1, 0x10ffff);
      while ((c >= 0xd800 && c < 0xe000) || nodeClass(c) !== py15[c]) c = randint(1, 0x10ffff);
      s += String.fromCodePoint(c);
    } else if (rnd() < 0.05) {
      s += pick(['<|eot_id|>', '<|begin_of_text|>', '<|lstrip|>', '<|rstrip|>', '[[x]]', '<|endoftext|>', '<mask>', '<s>']);
    } else {
      s += pick(Array.from(pick(pool)));
    }
  }
  return s;
}

// ---------------------------------------------------------------------------------------------------
// the vocabularies
const gvocab = JSON.parse(fs.readFileSync(shared + '/models/gpt2/vocab.json', 'utf8'));
const gmerges = fs.readFileSync(shared + '/models/gpt2/merges.txt', 'utf8').split('\n').slice(1).filter((l) => l.length);
const alphabet = tk.byteLevelAlphabet(); // the 256 byte characters

// vocab: the byte characters and the results of the first NMERGES merges, in GPT-2's order.
function cutVocab(nmerges) {
  const vocab = {};
  let id = 0;
  const bytesFirst = Object.keys(gvocab).filter((k) => gvocab[k] < 256).sort((a, b) => gvocab[a] - gvocab[b]);
  for (const c of bytesFirst) vocab[c] = id++;
  for (const c of alphabet) if (!(c in vocab)) throw new Error('byte character missing: ' + c);
  const merges = gmerges.slice(0, nmerges);
  for (const m of merges) {
    const [a, b] = m.split(' ');
    if (!(a + b in vocab)) vocab[a + b] = id++;
  }
  return { vocab, merges, next: id };
}

const LLAMA_RE = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const byteLevelDecoder = { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true };
function added(id, content, special, o = {}) {
  return { id, content, single_word: false, lstrip: !!o.lstrip, rstrip: !!o.rstrip,
           normalized: o.normalized === undefined ? !special : o.normalized, special };
}
function bpeModel(vocab, merges, ignoreMerges, pairs) {
  return { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
           fuse_unk: false, byte_fallback: false, ignore_merges: ignoreMerges, vocab,
           merges: pairs ? merges.map((m) => m.split(' ')) : merges };
}

function llama3(corpusPieces) {
  const { vocab, merges, next } = cutVocab(5000);
  let id = next;
  // whole words the cut merges cannot build: the most frequent pre-tokens of the corpus that GPT-2 has
  const count = new Map();
  for (const p of corpusPieces) if (p in gvocab && !(p in vocab)) count.set(p, (count.get(p) || 0) + 1);
  const words = [...count.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).slice(0, 300);
  for (const [w] of words) vocab[w] = id++;
  const bos = id;
  const names = ['<|begin_of_text|>', '<|end_of_text|>', '<|reserved_special_token_0|>', '<|reserved_special_token_1|>',
                 '<|finetune_right_pad_id|>', '<|reserved_special_token_2|>', '<|start_header_id|>', '<|end_header_id|>',
                 '<|eom_id|>', '<|eot_id|>', '<|python_tag|>'];
  const add = names.map((n) => added(id++, n, true));
  for (let k = 3; k < 12; k++) add.push(added(id++, '<|reserved_special_token_' + k + '|>', true));
  add.push(added(id++, '<|lstrip|>', true, { lstrip: true }));
  add.push(added(id++, '<|rstrip|>', true, { rstrip: true }));
  add.push(added(id++, '[[x]]', false));                       // normalized (the default for non-special)
  add.push(added(id++, 'qq<', false, { normalized: true }));  // matched only after the specials
  add.push(added(id++, '\u00fcn\u00ef', false, { normalized: false }));
  add.push(added(id++, '\u4e2d\u6587', false));
  const tpl = {
    type: 'TemplateProcessing',
    single: [{ SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
    pair: [{ SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
           { SpecialToken: { id: '<|begin_of_text|>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
    special_tokens: { '<|begin_of_text|>': { id: '<|begin_of_text|>', ids: [bos], tokens: ['<|begin_of_text|>'] } },
  };
  const j = {
    version: '1.0', truncation: null, padding: null, added_tokens: add, normalizer: null,
    pre_tokenizer: { type: 'Sequence', pretokenizers: [
      { type: 'Split', pattern: { Regex: LLAMA_RE }, behavior: 'Isolated', invert: false },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false }] },
    post_processor: { type: 'Sequence', processors: [
      { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true }, tpl] },
    decoder: byteLevelDecoder,
    model: bpeModel(vocab, merges, true, false),
  };
  const dir = OUT + '/llama3';
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(dir + '/tokenizer.json', JSON.stringify(j));
  fs.writeFileSync(dir + '/tokenizer_config.json', JSON.stringify({
    add_bos_token: true, added_tokens_decoder: {}, bos_token: '<|begin_of_text|>', clean_up_tokenization_spaces: true,
    eos_token: '<|eot_id|>', model_input_names: ['input_ids', 'attention_mask'], model_max_length: 131072,
    tokenizer_class: 'PreTrainedTokenizerFast' }, null, 2) + '\n');
  return tk.Tokenizer.fromFile(dir + '/tokenizer.json');
}

// GPT-2's and RoBERTa's layouts: written here, read by the library, saved by it (its own serialization).
function byteLevelFolder(name, nmerges, specials, post, extraFiles) {
  const { vocab, merges, next } = cutVocab(nmerges);
  let id = next;
  const add = specials.map(([content, o]) => {
    if (!(content in vocab)) vocab[content] = id++;
    return added(vocab[content], content, true, o);
  });
  const j = {
    version: '1.0', truncation: null, padding: null, added_tokens: add, normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: post(vocab), decoder: byteLevelDecoder, model: bpeModel(vocab, merges, false, true),
  };
  const dir = OUT + '/' + name;
  fs.mkdirSync(dir, { recursive: true });
  const t = tk.Tokenizer.fromString(JSON.stringify(j));
  t.save(dir + '/tokenizer.json');
  for (const [f, v] of Object.entries(extraFiles(vocab))) fs.writeFileSync(dir + '/' + f, JSON.stringify(v, null, 2) + '\n');
  return tk.Tokenizer.fromFile(dir + '/tokenizer.json');
}

// ---------------------------------------------------------------------------------------------------
async function cases(name, tok, texts, pairs, hand, out) {
  const pre = tok.getPreTokenizer();
  for (const [text, isHand] of texts.map((t) => [t, false]).concat(hand.map((t) => [t, true]))) {
    const e = await tok.encode(text, null, { addSpecialTokens: true });
    const p = await tok.encode(text, null, { addSpecialTokens: false });
    const ids = e.getIds(), plain = p.getIds();
    const o = { tok: name, text, ids };
    if (isHand) {
      o.plain = plain;
      o.pieces = pre.preTokenizeString(text).map((x) => x[0]);
      o.dec = await tok.decode(ids, false);
    }
    const dp = await tok.decode(plain, false), ds = await tok.decode(ids, true);
    if (dp !== text) o.dec_plain = dp;
    if (ds !== text) o.dec_skip = ds;
    out.push(o);
  }
  for (const [a, b] of pairs) {
    const e = await tok.encode(a, b, { addSpecialTokens: true });
    out.push({ tok: name, text: a, pair: b, ids: e.getIds() });
  }
  const n = tok.getVocabSize(true);
  const byteIds = alphabet.map((c) => tok.tokenToId(c));
  for (let k = 0; k < 80; k++) {
    const ids = [];
    const len = randint(0, 12);
    for (let i = 0; i < len; i++) ids.push(rnd() < 0.6 ? pick(byteIds) : rnd() < 0.8 ? randint(0, n - 1) : n - 1 - randint(0, 25));
    const skip = k % 2;
    out.push({ tok: name, decode: ids, skip, dec: await tok.decode(ids, !!skip) });
  }
}

async function main() {
  const cola = tsvColumn(shared + '/data/glue/CoLA/dev.tsv', 3, false, 1042);
  const sst = tsvColumn(shared + '/data/glue/SST-2/dev.tsv', 0, true, 400);
  const mrpcA = tsvColumn(shared + '/data/glue/MRPC/dev.tsv', 3, true, 150);
  const mrpcB = tsvColumn(shared + '/data/glue/MRPC/dev.tsv', 4, true, 150);
  const rte = tsvColumn(shared + '/data/glue/RTE/dev.tsv', 1, true, 40);
  const stsb = tsvColumn(shared + '/data/glue/STS-B/dev.tsv', 7, true, 100);
  const e2e = csvRows(shared + '/data/e2e/devset.csv', 300);
  const corpus = cola.concat(sst, mrpcA, mrpcB, rte, stsb, e2e.map((r) => r[0]), e2e.map((r) => r[1]));
  const pairs = mrpcA.slice(0, 100).map((a, i) => [a, mrpcB[i]]).concat(e2e.slice(0, 50));

  // the corpus's pre-tokens under Llama-3's pattern, to pick the whole words
  const probe = tk.Tokenizer.fromString(JSON.stringify({
    version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null,
    pre_tokenizer: { type: 'Sequence', pretokenizers: [
      { type: 'Split', pattern: { Regex: LLAMA_RE }, behavior: 'Isolated', invert: false },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false }] },
    post_processor: null, decoder: null, model: bpeModel(cutVocab(0).vocab, [], false, false) }));
  const pieces = [];
  for (const s of corpus) for (const p of probe.getPreTokenizer().preTokenizeString(s)) pieces.push(p[0]);

  const out = [];
  const llama = llama3(pieces);
  const rand = [];
  for (let i = 0; i < 300; i++) rand.push(randText());
  await cases('llama3', llama, corpus, pairs, HAND.concat(SPECIAL_TEXT, rand), out);

  const gpt2 = byteLevelFolder('gpt2', 5000, [['<|endoftext|>', { normalized: true }]],
    () => ({ type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true }),
    (v) => ({ 'config.json': { model_type: 'gpt2', bos_token_id: v['<|endoftext|>'], eos_token_id: v['<|endoftext|>'],
                               vocab_size: v['<|endoftext|>'] + 1 } }));
  const gpt2Hand = HAND.concat(['say <|endoftext|> now', '<|endoftext|><|endoftext|>', ' <|endoftext|> ', '<|endoftext|']);
  await cases('gpt2', gpt2, cola.slice(0, 150).concat(e2e.slice(0, 100).map((r) => r[1])), pairs.slice(0, 30),
              gpt2Hand.concat(rand.slice(0, 80)), out);

  const roberta = byteLevelFolder('roberta', 1000,
    [['<s>', {}], ['<pad>', {}], ['</s>', {}], ['<unk>', {}], ['<mask>', { lstrip: true, normalized: true }]],
    (v) => ({ type: 'RobertaProcessing', sep: ['</s>', v['</s>']], cls: ['<s>', v['<s>']], trim_offsets: true,
              add_prefix_space: false }),
    () => ({ 'tokenizer_config.json': { bos_token: '<s>', eos_token: '</s>', pad_token: '<pad>', unk_token: '<unk>',
                                        mask_token: '<mask>', tokenizer_class: 'RobertaTokenizer' } }));
  const robHand = ['a <mask> b', 'a<mask>', ' <mask>', 'x \t\u3000\x1c\x85<mask>y', '\u200b<mask>', '<s>hi</s>',
    '<pad><unk>', '<s><s> </s>', '< s> <S> <mask <mask>>', '<mask>', '<mask> <mask>', '  <mask>  ', '\n<mask>\n'];
  await cases('roberta', roberta, sst.slice(0, 100), pairs.slice(0, 30).concat([['a <mask>', ' <mask> b']]),
              HAND.slice(0, 60).concat(robHand, rand.slice(0, 100)), out);

  fs.writeFileSync('tests/fixtures/tokjson_cases.jsonl', out.map((o) => JSON.stringify(o)).join('\n') + '\n');
  console.log('wrote ' + out.length + ' cases to tests/fixtures/tokjson_cases.jsonl; ' + skipped +
              ' code points (Unicode ' + process.versions.unicode + ' vs 15.0 classes) left out of random text');
}
main().catch((e) => { console.error(e); process.exit(1); });
