#!/usr/bin/python3
"""tests/make_tok_fixtures.py: writes tests/fixtures/tok_cases.jsonl, golden cases for tokenizer.c from an
independent reference: Python's `regex` module (Debian's python3-regex) for the GPT-2 pattern, and Hugging
Face's slow GPT2Tokenizer.bpe loop re-typed below. Unusual Unicode (every kind of space, combining marks,
emoji, CJK, other scripts' digits, unassigned code points), random strings, truncation and decoding.

usage: /usr/bin/python3 tests/make_tok_fixtures.py [SHARED_DIR]     (default ../shared, run from the repo root)

tests/fixtures/tok_classes.txt: the class the regex module gives every code point, as ranges "LO HI CLASS"
(hex, inclusive; 1 \p{L}, 2 \p{N}, 3 \s; code points in no range match none of them).

In tok_cases.jsonl each line is one JSON object with "kind":
  "text":   model, text -> pieces (the pattern's matches) and ids (plain BPE, no specials)
  "seq":    model, a, b (or null), max_len (0 = none) -> ids, longest_first (roberta-base: <s> A </s></s> B </s>;
            gpt2: A B, no special tokens, as GPT2Tokenizer with add_bos_token False)
  "decode": model, ids, skip_special -> text (bytes decoded with errors="replace")
"""
import json
import random
import sys

import regex

shared = sys.argv[1] if len(sys.argv) > 1 else "../shared"
PAT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class Tok:
    def __init__(self, name):
        d = "%s/models/%s" % (shared, name)
        self.enc = json.load(open(d + "/vocab.json", encoding="utf-8"))
        self.dec = {v: k for k, v in self.enc.items()}
        lines = open(d + "/merges.txt", encoding="utf-8").read().split("\n")[1:-1]
        self.ranks = dict(zip([tuple(l.split()) for l in lines], range(len(lines))))
        self.be = bytes_to_unicode()
        self.bd = {v: k for k, v in self.be.items()}
        if "<s>" in self.enc:
            self.bos, self.eos = self.enc["<s>"], self.enc["</s>"]
        else:
            self.bos = self.eos = self.enc["<|endoftext|>"]
        self.special = {self.enc[s] for s in ("<s>", "</s>", "<pad>", "<unk>", "<mask>", "<|endoftext|>") if s in self.enc}
        # the tokens PreTrainedTokenizer.tokenize() splits on: RobertaTokenizer's five, GPT2Tokenizer's one
        self.added = ["<s>", "</s>", "<unk>", "<pad>", "<mask>"] if "<s>" in self.enc else ["<|endoftext|>"]
        self.roberta = "<s>" in self.enc
        self.cache = {}

    def bpe(self, token):  # GPT2Tokenizer.bpe, word for word in behaviour
        if token in self.cache:
            return self.cache[token]
        word = tuple(token)
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            bigram = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if bigram not in self.ranks:
                break
            first, second = bigram
            new_word, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
        self.cache[token] = word
        return word

    def text(self, t):
        pieces = PAT.findall(t)
        ids = []
        for p in pieces:
            ids.extend(self.enc[x] for x in self.bpe("".join(self.be[b] for b in p.encode("utf-8"))))
        return pieces, ids

    def tokenize(self, t):  # PreTrainedTokenizer.tokenize: split on added tokens, <mask> is lstrip=True
        chunks = [c for c in regex.split("(" + "|".join(regex.escape(x) for x in self.added) + ")", t)]
        for i, c in enumerate(chunks):
            if c == "<mask>" and i > 0 and i % 2 == 1:
                chunks[i - 1] = chunks[i - 1].rstrip()
        ids = []
        for i, c in enumerate(chunks):
            if i % 2 == 1:
                ids.append(self.enc[c])
            elif c:
                ids.extend(self.text(c)[1])
        return ids

    def seq(self, a, b, max_len):
        A = self.tokenize(a)
        B = self.tokenize(b) if b is not None else None
        if not self.roberta:  # GPT2Tokenizer adds no special token (add_bos_token False): A, or A B
            room = 0
        else:
            room = 2 if B is None else 4
        if max_len and len(A) + (len(B) if B else 0) + room > max_len:
            n = len(A) + (len(B) if B else 0) + room - max_len
            if B is None:
                A = A[:len(A) - n]
            else:  # transformers' truncate_sequences, LONGEST_FIRST
                first = min(abs(len(A) - len(B)), n)
                second = n - first
                if len(A) > len(B):
                    a_cut, b_cut = first + second // 2, second - second // 2
                else:
                    a_cut, b_cut = second // 2, first + second - second // 2
                A, B = A[:len(A) - a_cut], B[:len(B) - b_cut]
        if not self.roberta:
            return A + ([] if B is None else B)
        return [self.bos] + A + [self.eos] + ([] if B is None else [self.eos] + B + [self.eos])

    def decode(self, ids, skip):
        s = "".join(self.dec[i] for i in ids if not (skip and i in self.special))
        return bytes(self.bd[c] for c in s).decode("utf-8", errors="replace")


# Every White_Space character, and the near misses that are not (U+1C..1F, U+180E, U+200B, U+FEFF).
SPACES = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
         "\u2028\u2029\u202f\u205f\u3000"
NOT_SPACES = "\x1c\x1d\x1e\x1f\u180e\u200b\ufeff"
HAND = [
    "", " ", "  ", "a", " a", "  a", "a ", "a  ", "\ta", " \ta", "\t a", "a\t\tb", "a \n b", "\n\n\nx", "x\n\n\n",
    "I'm you're we've they'll he'd it's don't", "I'M YOU'RE IT'S", "'s", "''s", "'s's", " 's", "'x", "'", "''",
    "a's", "?'s", "'ll've", "'re'", "'\u2019s", "it\u2019s",
    "hello world", "Hello, World!!", "x = 3.14e-10;", "e-mail: a@b.c", "$100,000.00", "50%", "1st 2nd 3rd",
    "abc123def", "123abc", "12 345", " 1 2", "x\u00b2 + y\u00b3", "\u00bd \u2153 \u2155", "\u2160\u2161\u2162 \u216b",
    "\u0663\u0664\u0665 \u0966\u0967 \uff11\uff12 \U0001d7ce\U0001d7cf", "\u0e51\u0e52 \u1040",
    "e\u0301 caf\u00e9 cafe\u0301", "\u0301a", " \u0301", "a\u0301\u0302\u0303b", "\u0915\u094d\u0937",
    "\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22", "\u0627\u0644\u0639\u0631\u0628\u064a\u0629", "\u05e9\u05dc\u05d5\u05dd",
    "\u4f60\u597d\uff0c\u4e16\u754c\u3002", "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8", "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
    "\U0001f600", " \U0001f600\U0001f601", "\U0001f468\u200d\U0001f469\u200d\U0001f467", "\U0001f44d\U0001f3fd",
    "\U0001f1eb\U0001f1f7", "a\U0001f600b", "\u2764\ufe0f", "\u00a9 \u00ae \u2122", "\u2200x\u2208\u211d: x\u00b2\u22650",
    "\U00020000\U0002a6d6", "\ue000\uf8ff", "\U000f0000", "\U0010ffff", "\uffff\ufffe", "\ufffd", "\u0378\u0379",
    "\x00a\x00", "\x01\x02\x7f", "\u0085x", "x\u0085", "a\u00a0b", " \u00a0b", "\u00a0\u00a0b", "a\u3000\u3000b",
    "\u2028\u2029", "\ufeffhello", "hello\ufeff", "a\x1cb\x1dc\x1e d\x1f", "a\u200bb", "\u180e",
    "   leading and trailing   ", "tabs\tand\nnewlines\r\n", "\r\n\r\n", "   \t  x",
    "\u02b0\u02b1 \u3005 \u3031", "\u01c5\u01c8", "\u2070\u2074", "\u2460\u2461", "\u1d2c\u1d2d",
    "Ab" * 60, "a" * 300, "!" * 50 + "?" * 50, " " * 40 + "x", "\U0001f600" * 30,
]


def rand_text(rng):
    pool = [
        "abcxyzABC", "0123456789", " ", "  \t\n", SPACES, NOT_SPACES, "'srtvemld", ".,!?;:-()[]\"'",
        "\u00e9\u00fc\u00f1\u00df\u0107", "\u0301\u0308\u0323", "\u0663\u0966\uff11\u2162\u00b2\u00bd",
        "\u4e00\u4e8c\u4e09\u3042\u30a2\uac00", "\U0001f600\U0001f44d\U0001f3fd\u200d\u2764\ufe0f",
        "\u0627\u05d0\u0e01\u0915\u094d", "\u20ac\u00a3\u00a5\u00a9\u2122\u2200", "\x00\x01\x1f\x7f\u0085",
    ]
    n = rng.randint(1, 40)
    out = []
    for _ in range(n):
        if rng.random() < 0.1:  # any code point at all, surrogates excepted
            c = rng.randint(0, 0x10FFFF)
            while 0xD800 <= c < 0xE000:
                c = rng.randint(0, 0x10FFFF)
            out.append(chr(c))
        else:
            out.append(rng.choice(rng.choice(pool)))
    return "".join(out)


def write_classes():
    letter, number, space = regex.compile(r"\p{L}"), regex.compile(r"\p{N}"), regex.compile(r"\s")
    ranges = []
    for cp in range(0x110000):
        ch = chr(cp)
        c = 1 if letter.match(ch) else 2 if number.match(ch) else 3 if space.match(ch) else 0
        if ranges and ranges[-1][2] == c and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp, c])
    with open("tests/fixtures/tok_classes.txt", "w") as f:
        f.write("# regex %s: LO HI CLASS (1 letter, 2 number, 3 space)\n" % regex.__version__)
        for lo, hi, c in ranges:
            if c:
                f.write("%X %X %d\n" % (lo, hi, c))


def main():
    write_classes()
    rng = random.Random(20240601)
    out = []
    for model in ("roberta-base", "gpt2"):
        t = Tok(model)
        texts = HAND + list(SPACES) + list(NOT_SPACES) + ["a" + c + "b" for c in SPACES + NOT_SPACES] + \
            ["a" + c + c + "b" for c in SPACES] + [c + " b" for c in SPACES] + [" " + c + "b" for c in SPACES]
        if model == "gpt2":
            texts = HAND[:40]  # the other model's ids; the pattern is the same
        texts += [rand_text(rng) for _ in range(200 if model == "roberta-base" else 50)]
        for s in texts:
            pieces, ids = t.text(s)
            out.append({"kind": "text", "model": model, "text": s, "pieces": pieces, "ids": ids})
        # sequences: single and pair, lengths around the truncation points
        for k in range(120 if model == "roberta-base" else 20):
            a = rand_text(rng).replace("\x00", "")  # C strings
            b = rand_text(rng).replace("\x00", "") if k % 3 else None
            full = len(t.seq(a, b, 0))
            max_len = rng.choice([0, full, full + 1, max(full - 1, 4), max(full - 7, 4), 4, 5, 6, 7,
                                  rng.randint(4, 64)])
            out.append({"kind": "seq", "model": model, "a": a, "b": b, "max_len": max_len,
                        "ids": t.seq(a, b, max_len)})
        # special tokens written in the text
        for a, b in [("a <mask> b", None), ("a<mask>", " <mask>"), ("x \t\u3000\x1c\x85<mask>y", "\u200b<mask>"),
                     ("<s>hi</s>", "<pad><unk>"), ("<s><s> </s>", "< s> <S> <mask <mask>>"),
                     ("say <|endoftext|> now", "<|endoftext|><|endoftext|>"), ("<mask>", "<mask> <mask>"),
                     ("  <mask>  ", "\n<mask>\n")]:
            for max_len in (0, 6):
                out.append({"kind": "seq", "model": model, "a": a, "b": b, "max_len": max_len,
                            "ids": t.seq(a, b, max_len)})
        # decoding arbitrary ids, whose bytes need not be UTF-8
        byte_ids = [t.enc[t.be[b]] for b in range(256)]
        for k in range(60 if model == "roberta-base" else 10):
            ids = [rng.choice(byte_ids) if rng.random() < 0.7 else rng.randrange(len(t.enc))
                   for _ in range(rng.randint(0, 12))]
            skip = k % 2
            out.append({"kind": "decode", "model": model, "ids": ids, "skip_special": skip,
                        "text": t.decode(ids, skip)})
    with open("tests/fixtures/tok_cases.jsonl", "w", encoding="utf-8") as f:
        for o in out:
            f.write(json.dumps(o, ensure_ascii=False) + "\n")
    print("wrote %d cases to tests/fixtures/tok_cases.jsonl" % len(out))


if __name__ == "__main__":
    main()
