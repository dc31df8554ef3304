#!/usr/bin/python3
"""tests/make_score_fixtures.py: golden values for `fedex score` (score.c, ptb.c) from e2e-metrics' own code.

It imports the scorers of a checkout of e2e-metrics (github tuetschek/e2e-metrics) given on the command
line: measure_scores.load_data reads the files, metrics.pymteval scores BLEU and NIST as `-p` does, and
pycocoevalcap's PTBTokenizer, Rouge and Cider score ROUGE-L and CIDEr as COCOEvalCap.evaluate does (its
METEOR step is left out: fedex does not compute METEOR). The tokenizer needs the Stanford CoreNLP 3.4.1
jar that e2e-metrics ships; give its path. A jar built from CoreNLP's v3.4.1 sources serves: `javac
--release 8 -sourcepath src -d classes src/edu/stanford/nlp/process/PTBTokenizer.java`, then `jar cf`
(the generated Morpha.java, stored apart in that repository, may be a stub: the tokenizer never calls
it). Java runs it, as e2e-metrics does. Nothing of
e2e-metrics is copied here: the checkout is copied to a temporary folder with the jar beside its tokenizer.
Where the checkout's optional imports are missing (the `future` package's past.utils, matplotlib and
scikit-image, which pycocotools imports and these scorers never call) small stand-ins are put in their
place.

For each case it writes tests/fixtures/score_NAME.hyp and .refs (the measure_scores formats) and
score_NAME.json with the four scores; NIST is null where pymteval divides by zero. score_ptb.jsonl holds
captions made of pieces that hit the tokenizer's rules, each with the tokens e2e-metrics' PTBTokenizer gives.

usage: tests/make_score_fixtures.py E2E_METRICS_DIR CORENLP_JAR [E2E_DATA_DIR]
"""
import csv
import json
import os
import random
import shutil
import sys
import tempfile
import types

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures")


def stand_ins():
    """Modules e2e-metrics imports but these scorers never use, where they are not installed."""
    try:
        import past.utils  # noqa: F401
    except ImportError:
        past = types.ModuleType("past")
        utils = types.ModuleType("past.utils")

        def old_div(a, b):  # the future package's old_div: floor division for two ints
            if isinstance(a, int) and isinstance(b, int):
                return a // b
            return a / b
        utils.old_div = old_div
        past.utils = utils
        sys.modules["past"], sys.modules["past.utils"] = past, utils
    for name, attrs in (("matplotlib", ()), ("matplotlib.collections", ("PatchCollection",)),
                        ("matplotlib.patches", ("Polygon",)), ("skimage", ()), ("skimage.draw", ("polygon",))):
        try:
            __import__(name)
        except ImportError:
            m = types.ModuleType(name)
            for a in attrs:
                setattr(m, a, None)
            sys.modules[name] = m


def setup(metrics_dir, jar):
    tmp = tempfile.mkdtemp(prefix="e2e-metrics-")
    dst = os.path.join(tmp, "e2e-metrics")
    shutil.copytree(metrics_dir, dst, ignore=shutil.ignore_patterns(".git", "*.jar", "*.gz"))
    shutil.copy(jar, os.path.join(dst, "pycocoevalcap", "tokenizer", "stanford-corenlp-3.4.1.jar"))
    sys.path.insert(0, dst)
    stand_ins()
    return tmp


def score_files(hyp_path, ref_path, tokenized):
    """The four scores of the two files, by e2e-metrics' code."""
    import measure_scores as ms
    from metrics.pymteval import BLEUScore, NISTScore
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.cider.cider import Cider
    from pycocotools.coco import COCO

    _, data_ref, data_sys = ms.load_data(ref_path, hyp_path)
    if tokenized:
        # Pre-tokenised input: split at spaces, matched as given (case-sensitive), no PTB tokenisation.
        bleu, nist = BLEUScore(case_sensitive=True), NISTScore(case_sensitive=True)
        for refs, hyp in zip(data_ref, data_sys):
            bleu.append(hyp.split(), [r.split() for r in refs])
            nist.append(hyp.split(), [r.split() for r in refs])
        b = bleu.score()
        try:
            n = nist.score()
        except ZeroDivisionError:
            n = None
        gts = {i: [" ".join(r.split()) for r in refs] for i, refs in enumerate(data_ref)}
        res = {i: [" ".join(h.split())] for i, h in enumerate(data_sys)}
    else:
        try:
            mt = ms.run_pymteval(data_ref, data_sys)
            b, n = mt["BLEU"], mt["NIST"]
        except ZeroDivisionError:  # NIST's division; BLEU alone then
            bleu = BLEUScore()
            for refs, hyp in zip(data_ref, data_sys):
                bleu.append(hyp, refs)
            b, n = bleu.score(), None
        # COCOEvalCap.evaluate without its METEOR step
        coco = COCO()
        coco.dataset = ms.create_coco_refs(data_ref)
        coco.createIndex()
        coco_res = coco.loadRes(resData=ms.create_coco_sys(data_sys))
        ids = coco.getImgIds()
        gts = {i: coco.imgToAnns[i] for i in ids}
        res = {i: coco_res.imgToAnns[i] for i in ids}
        tok = PTBTokenizer()
        gts, res = tok.tokenize(gts), tok.tokenize(res)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    return {"BLEU": b, "NIST": n, "ROUGE_L": float(rouge), "CIDEr": float(cider)}


def write_case(name, hyps, refs, tokenized=False, single=False):
    """SINGLE: the references file without blank lines, one reference an item."""
    hp, rp = os.path.join(OUT, "score_%s.hyp" % name), os.path.join(OUT, "score_%s.refs" % name)
    with open(hp, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(h + "\n" for h in hyps))
    with open(rp, "w", encoding="utf-8", newline="\n") as f:
        if single:
            f.write("".join(r[0] + "\n" for r in refs))
        else:
            f.write("\n".join("".join(x + "\n" for x in group) for group in refs))
    s = score_files(hp, rp, tokenized)
    s.update({"hyp": os.path.basename(hp), "refs": os.path.basename(rp), "tokenized": tokenized, "items": len(hyps)})
    with open(os.path.join(OUT, "score_%s.json" % name), "w", encoding="utf-8") as f:
        json.dump(s, f, indent=1, sort_keys=True)
        f.write("\n")
    print("%-10s %4d items  BLEU %.6f  NIST %s  ROUGE_L %.6f  CIDEr %.6f" %
          (name, len(hyps), s["BLEU"], "%.6f" % s["NIST"] if s["NIST"] is not None else "null", s["ROUGE_L"],
           s["CIDEr"]), file=sys.stderr)


def read_dev(data_dir):
    """devset.csv's references grouped by MR (rows of one MR are adjacent)."""
    groups = []
    with open(os.path.join(data_dir, "devset.csv"), encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))[1:]
    last = None
    for mr, ref in rows:
        ref = " ".join(ref.split())
        if mr != last:
            groups.append([])
            last = mr
        groups[-1].append(ref)
    return groups


def perturb(rng, text):
    """A plausible system output: words dropped, repeated, swapped, case and punctuation changed."""
    w = text.split()
    out = []
    for i, x in enumerate(w):
        r = rng.random()
        if r < 0.08:
            continue
        if r < 0.12:
            out += [x, x]
        elif r < 0.16 and out:
            out.insert(len(out) - 1, x)
        elif r < 0.20:
            out.append(x.upper())
        elif r < 0.23:
            out.append(x.rstrip(".,") + rng.choice([",", ".", " .", "!", ";", "'s"]))
        else:
            out.append(x)
    return " ".join(out)


# Pieces for the tokenizer's case: every kind of token its rules single out.
PTB_PIECES = [
    "The", "eagle", "isn't", "it's", "can't", "cannot", "gonna", "'tis", "'twas", "U.S.", "Mr.", "Jan.", "etc.",
    "St.", "a.", "A.", "co.", "ltd", "pty.", "Inc.", "(", ")", "[", "]", "{", "}", "\"", "'", "`", "``", "''",
    "\u2018", "\u2019", "\u201c", "\u201d", "...", ". . .", "\u2026", "--", "---", "-", "\u2013", "\u2014",
    "&amp;", "&quot;", "&lt;", "&gt;", "&apos;", "&nbsp;", "\u00a320-25", "\u00a3", "$", "US$", "\u20ac5",
    "\u00a2", "#", "#food", "@eagle", "info@x.com", "www.x.com", "http://x.org/a?b=1.", "x.com", "file.txt",
    "5/5", "1/2", "3 1/2", "\u00bd", "1,000.50", "3.5", "-3", "+4", "12/12/2012", "01223 456789",
    "(020) 123 4567", ":)", ":(", ";-)", "^_^", "c++", "c#", "y'all", "o'clock", "O'Neill", "d'Artagnan", "'90s",
    "'em", "rock'n'roll", "'cause", "e-mail", "family-friendly", "high-priced", "and/or", "AT&T", "AT&amp;T",
    "Q&A", "3-4", "x*y", "**", "\\*", "@@", "__", "=", ";", ":", ",", "?", "!", "?!", "\u00bf", "\u00a1",
    "\u00ad", "soft\u00adhyphen", "caf\u00e9", "na\u00efve", "\u00c7a", "\u039f\u0394\u039f\u03a3",
    "\u0130stanbul", "\u00df", "\u65e5\u672c\u8a9e", "\u4e2d\u6587\u3002", "\U0001F600", "a\U0001F600b",
    "\u00a0", "\u2003", "\u200b", "\ufeff", "<b>", "</b>", "<br/>", "<a href='x'>", "<!DOC x>", "<<", ">>", "<",
    ">", "%", "+", "~", "^", "|", "\\", "\u00b0", "\u00b2", "\u00d7", "\u2713", "\u2192", "\u2200", "\x7f",
    "\x01", "n't", "'s", "'S", "'re", "'ll", "'d", "'m", "'ve", "N'T", "DON'T", "Don't", "I'm", "we've", "they'd",
    "ol'", "somethin'", "Dunkin'", "l'", "cont'd", "ain't", "won't", "IT'S", "X.", "B.C.", "e.g.", "i.e.", "a.m.",
    "Ph.D.", "ca.", "fig.", "no.", "No.", "5.", "5,", "food.It", "end.The", "area.", "Sept.", "Calif.", "vs.", "vs",
    "Dr", "Mt.", "Ave.", "Blvd.", "Jr.", "Canada-U.S.", "U.S.-U.K.", "S&P-500", "-LRB-", "pro-", "anti-", "Cap'n",
    "c'est", "A.B", "I.", "Z.", "x", "\u039f\u0394\u039f\u03a33D", "\u03a3\u03a3-\u0391\u03a3\u03a3",
    "\u03a3\u03a3'\u03a3\u03a3", "\u0391\u03a3\u00b7\u0392", "\u0391\u03a3\u2019\u03a3", "\u0391\u03a3:\u03a3",
]


def ptb_case(rng, n=400):
    """Captions of random pieces, tokenised by e2e-metrics' PTBTokenizer (the Java 3.4.1 tokenizer, then its
    punctuation removal), as one run: the look-ahead of a rule reaches into the next caption, as there."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    caps = []
    for _ in range(n):
        s = ""
        for _ in range(rng.randint(0, 12)):
            s += rng.choice(PTB_PIECES) + rng.choice([" ", " ", " ", " ", "", "  ", "\t"])
        caps.append(s.strip(" \t") if rng.random() < 0.9 else s)
    got = PTBTokenizer().tokenize({0: [{"caption": c} for c in caps]})[0]
    with open(os.path.join(OUT, "score_ptb.jsonl"), "w", encoding="utf-8") as f:
        for c, t in zip(caps, got):
            f.write(json.dumps({"text": c, "tokens": t}) + "\n")
    print("ptb        %4d captions" % n, file=sys.stderr)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    data_dir = sys.argv[3] if len(sys.argv) > 3 else os.path.join(HERE, "..", "..", "shared", "data", "e2e")
    tmp = setup(sys.argv[1], sys.argv[2])
    try:
        rng = random.Random(20241020)
        dev = read_dev(data_dir)
        multi = [g for g in dev if len(g) >= 2]
        # 1. one reference held out as the hypothesis, the rest its references (counts vary by MR)
        sel = multi[:120]
        write_case("heldout", [g[0] for g in sel], [g[1:] for g in sel])
        # 2. perturbed references, against all of an MR's references
        sel = dev[120:220]
        write_case("perturbed", [perturb(rng, rng.choice(g)) for g in sel], sel)
        # 3. edge cases: empty and one-word hypotheses, punctuation, digits, case, quotes, unicode
        edge_h = [
            "", "Aromi", "...", "The Eagle is a coffee shop - its price range is £20-25 (moderate).",
            "THE EAGLE ISN'T CHEAP; IT'S RATED 5 OUT OF 5!", "It's 3.5/5, i.e. ok, near St. John's etc. OK",
            "Café Rouge \u2019s food is \u201cgreat\u201d \u2014 ça va? Ça va.", "ΟΔΟΣ Σ σοφός İstanbul ß ΟΔΟΣ3D ΣΣ-ΑΣΣ",
            "Visit www.example.com or mail info@example.com :) #food @eagle", "cannot gonna 'tis 1,000.50 1/2 ½ €5",
            "emoji \U0001F600 inside wor\U0001F600d and \u00a0nbsp\u2003em", "a.b.c. U.S. Mr. Smith. Jan. The",
            "<b>bold</b> &amp; &quot;quoted&quot; &lt;x&gt; -- --- ----", "x" * 3,
        ]
        edge_r = [
            ["Aromi is a coffee shop."], ["Aromi is a coffee shop.", "Aromi serves food."],
            ["Dots... and more dots.", "Nothing here"],
            ["The Eagle is a coffee shop with a price range of £20-25.", "The Eagle coffee shop is moderately priced."],
            ["The Eagle isn't cheap. It's rated 5 out of 5.", "The Eagle is not cheap", "It is rated 5 out of 5."],
            ["It's rated 3.5 out of 5 near St. John's.", "Rated 3.5/5, ok."],
            ["Café Rouge's food is \"great\" - ça va?", "The food at Café Rouge is great."],
            ["Οδος σοφος istanbul ss οδος3d σς-ασς", "ΟΔΟΣ σοφός İSTANBUL ẞ οδοσ3d σσ-ασς"],
            ["Visit www.example.com :)", "Mail info@example.com #food"],
            ["You can not go 1,000.50 1/2 €5", "cannot gonna tis"],
            ["emoji inside word and nbsp em", "emoji inside wor d"],
            ["a.b.c. U.S. Mr. Smith", "Jan. The U.S."],
            ["bold & \"quoted\" <x> --", "<b>bold</b> & quoted"],
            ["xxx", "x x x"],
        ]
        write_case("edge", edge_h, edge_r)
        # 4. a references file with one reference an item (no blank lines)
        sel = dev[220:260]
        write_case("single", [perturb(rng, g[-1]) for g in sel], [[g[0]] for g in sel], single=True)
        # 5. tokenised input: split at spaces, matched case-sensitively
        sel = dev[260:330]
        tok = lambda s: " ".join(s.replace(".", " .").replace(",", " ,").split())
        write_case("tokenized", [tok(perturb(rng, g[0])) for g in sel], [[tok(r) for r in g[1:] or g] for g in sel],
                   tokenized=True)
        # 6. one-word hypotheses: pymteval's NIST divides by zero (null), the others are defined
        sel = dev[330:340]
        write_case("oneword", [g[0].split()[0] for g in sel], sel)
        # 7. the tokenizer alone, on captions made to hit its rules
        ptb_case(rng)
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
