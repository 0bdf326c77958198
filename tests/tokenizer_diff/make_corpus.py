#!/usr/bin/env python3
"""Writes the generated files of corpus/ (the hand-written ones are committed as they are).

usage: python3 make_corpus.py [TOKENIZER_JSON]
TOKENIZER_JSON (default: DeepSeek-V3's, from node_modules) supplies the added tokens that
special_tokens.txt embeds in text. The output is deterministic (fixed seeds).

Characters on which Hugging Face tokenizers (Oniguruma regexes) and the JS reference
(JavaScript regexes) are known to disagree are left out of these files: U+0085 (white space for
Oniguruma, not for JS) and U+FEFF (the reverse); see docs/tokenizer.md. Characters assigned after
Unicode 14 are left out too (PCRE2 10.42 knows Unicode 14, Node's ICU knows later versions).
"""
import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")


def write(name, data):
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def whitespace():
    ws = [" ", "  ", "   ", "    ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", "\r\n", "\r\n\r\n", "\r", "\x0b", "\x0c",
          "\u00a0", "\u1680", "\u2000", "\u2001", "\u2002", "\u2003", "\u2007", "\u2009", "\u200a", "\u2028",
          "\u2029", "\u202f", "\u205f", "\u3000", "\u180e", "\u200b", "\u2060", " \n ", " \t\n", "\n \n", "  \r\n  "]
    words = ["word", "Word", "x", "42", "7", "!", "?!", "...", "(a)", "é", "日本", "中文字", "😀", "--", "'s", "'", "\"q\"",
             "a.b", "f(x)", "#", "<tag>", "ñ"]
    rng = random.Random(1234)
    parts = ["leading spaces follow\n", "     five spaces at the start of this line", "\n",
             "trailing spaces   \n", "tabs\tin\tthe\tmiddle\t\t\tand\tend\t\n", "\n\n\n\n\n\n\n\n",
             "after eight newlines", " " * 40, "forty spaces before this", "\n" + " " * 17 + "\n",
             "\t \t \t mixed \t\n", "CRLF line\r\nanother\r\n\r\n\r\nend\r", "\n", "lone CR\rinside\r\rtext\n",
             "vertical\x0btab and form\x0cfeed\n", "nbsp\u00a0between\u00a0\u00a0words \u00a0 \n",
             "ideographic\u3000space\u3000\u3000\u3000run\n", "line\u2028separator and para\u2029graph\n",
             "mongolian\u180evowel separator and zero\u200bwidth\u2060joiner\n"]
    for _ in range(600):
        parts.append(rng.choice(words))
        parts.append(rng.choice(ws))
    parts.append("\n" + " " * 300 + "\n" + "\t" * 50 + "\n" * 30 + "end with spaces   ")
    write("whitespace.txt", "".join(parts))


def special_tokens(tokenizer_json):
    with open(tokenizer_json, encoding="utf-8") as f:
        added = [t["content"] for t in json.load(f)["added_tokens"]]
    rng = random.Random(99)
    fillers = ["Hello", " world", "x", "", " ", "\n", "1+1=?", "中文", "🙂", "<", ">", "|", "｜", "▁", "<｜", "｜>",
               "think", "</", "a<｜b", "<|im_start|>", "<|EOT|", "<｜User", "User｜>", "<<", ">>"]
    parts = ["Every added token of the vocabulary, in text:\n"]
    for tok in added:  # each once, with text around it
        parts.append(rng.choice(fillers) + tok + rng.choice(fillers) + "\n")
    parts.append("\nBack to back:\n")
    order = added[:]
    rng.shuffle(order)
    parts.append("".join(order[:200]) + "\n")
    parts.append("\nRandom mix:\n")
    for _ in range(1500):
        parts.append(rng.choice(added) if rng.random() < 0.3 else rng.choice(fillers))
    parts.append("\nLookalikes that are not tokens: <|begin_of_sentence|> <｜User|> <|User｜> <｜ User｜> "
                 "<｜user｜> <｜Assistant ｜> <｜begin▁of▁sentence｜ > <｜end_of_sentence｜>\n")
    parts.append("A real one with ASCII bars: <|EOT|> and half <|EOT| and <|EOT|><|EOT|>|>\n")
    parts.append("Chat: <｜begin▁of▁sentence｜>You are helpful.<｜User｜>hello<｜Assistant｜>Hi!<｜end▁of▁sentence｜>"
                 "<｜User｜>1+1=?<｜Assistant｜>2<｜end▁of▁sentence｜>\n")
    write("special_tokens.txt", "".join(parts))


def invalid_utf8():
    b = bytearray()
    b += "Valid text first: héllo wörld 中文 🙂\n".encode()
    cases = [
        b"lone continuation \x80 and \xbf\xbf here\n",
        b"overlong slash \xc0\xaf and NUL \xc0\x80 and \xe0\x80\xaf and \xf0\x80\x80\xaf\n",
        b"surrogates \xed\xa0\x80 \xed\xbf\xbf \xed\xa0\xbd\xed\xb8\x80 (CESU emoji)\n",
        b"beyond U+10FFFF \xf4\x90\x80\x80 and \xf5\x80\x80\x80 and bytes \xf8\xfc\xfe\xff\n",
        b"truncated 2-byte \xc3 then space, 3-byte \xe4\xb8 then text, 4-byte \xf0\x9f\x99 end\n",
        b"truncated inside words: caf\xc3 na\xc3\xafve \xe6\x97\xa5\xe6\x9c words\n",
        b"latin-1 encoded: caf\xe9 na\xefve r\xe9sum\xe9 \xa9 2024 \xb5s\n",
        b"windows-1252 quotes: \x93smart\x94 and \x91single\x92 \x96 dash \x85 ellipsis\n",
        b"mixed: \xe2\x82 \xe2\x82\xac \xe2 \x82\xac \xf0\x9f \xf0\x9f\x98\x80\xf0 \x9f\x98\x80\n",
        b"digits around junk: 12\x803456\xff789 and letters ab\xc1cd\n",
        b"special token broken: <\xef\xbd\x9cUser\xef\xbd> and <\xef\xbd\x9cUser\xef\xbd\x9c>\n",
    ]
    for c in cases:
        b += c
    rng = random.Random(7)
    for _ in range(300):  # random bytes between words
        b += rng.choice([b"word ", b"\xe4\xb8\xad", b" ", b"\n", b"42", b"\xf0\x9f\x98\x80"])
        b += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
    b += b"\nends with an unfinished sequence \xe4\xb8"
    write("invalid_utf8.txt", bytes(b))


def random_mix():
    rng = random.Random(2024)
    pools = {
        "latin": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "accent": "àáâãäåæçèéêëìíîïðñòóôõöøùúûüýþÿĀāĂăĄąĆćČčĎďĐđĒēĘęĚěĞğĪīİıŁłŃńŇňŌōŐőŒœŘřŚśŞşŠšŢţŤťŪūŮůŰűŸŹźŻżŽžƒǅǈǋ",
        "greek": "αβγδεζηθικλμνξοπρστυφχψωΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩάέήίόύώϊϋΐΰ",
        "cyrillic": "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯіїєґ",
        "cjk": "的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出而要于就下得可你年生自会那后能对着事其里所去行过家十用发天如然作方成者多日都三小军二无同么经法当起与好看学进种将还分此心前面又定见只主没公从",
        "kana": "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをんアイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワヲンーッャュョ",
        "hangul": "가나다라마바사아자차카타파하한국어글말씀세종대왕",
        "digits": "0123456789",
        "otherdigits": "٠١٢٣٤٥٦٧٨٩०१२३४५६७८९０１２３４５６７８９²³¹¼½¾ⅠⅡⅢⅣⅤ①②③",
        "punct": "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
        "upunct": "¡¿«»‘’“”„‹›—–…·•†‡‰′″‼、。，．！？：；「」『』（）【】《》〈〉〜・",
        "symbols": "©®™°±×÷∞≈≠≤≥∑∏√∫∂∆∇∈∉∩∪⊂⊃←↑→↓↔⇒⇔♠♣♥♦♪♫★☆✓✗€£¥₹₩₽",
        "marks": "\u0300\u0301\u0302\u0303\u0308\u030a\u0327\u0331\u093f\u0940\u0947\u094d\u0e31\u0e34\u0e47\u05b7\u064e\u064f\u0650\u20dd",
        "indic": "कखगघङचछजझञटठडढणतथदधनपफबभमयरलवशषसहািীুূেৈোৌ",
        "arabic": "ابتثجحخدذرزسشصضطظعغفقكلمنهوي",
        "emoji": ["😀", "😂", "🥲", "👍", "👍🏽", "❤️", "🇯🇵", "👨‍👩‍👧", "🔥", "🚀", "✨", "🍕", "🐱", "1️⃣", "☀️"],
        "space": [" ", " ", " ", "  ", "\t", "\n", "\n\n", "\r\n", "\u00a0", "\u3000", "   \n", " \t "],
        "format": ["\u200b", "\u200c", "\u200d", "\u2060", "\u00ad", "\u200e", "\u180e"],
    }
    weights = {"latin": 30, "accent": 5, "greek": 3, "cyrillic": 4, "cjk": 8, "kana": 4, "hangul": 3, "digits": 10,
               "otherdigits": 2, "punct": 10, "upunct": 3, "symbols": 3, "marks": 2, "indic": 2, "arabic": 2,
               "emoji": 3, "space": 25, "format": 1}
    names = list(weights)
    w = [weights[n] for n in names]
    out = []
    for _ in range(12000):
        pool = pools[rng.choices(names, w)[0]]
        run = rng.choice([1, 1, 1, 2, 3, 4, 5, 8, 13])
        out.append("".join(rng.choice(pool) for _ in range(run)))
    write("random_mix.txt", "".join(out))


def long_runs():
    parts = ["a" * 5000, " ", "ab" * 1000, "\n", "Supercalifragilisticexpialidocious" * 40, "\n",
             "1234567890" * 300, "\n", "中" * 2000, "\n", "😀" * 300, "\n", "-" * 1000, "\n", "=" * 257, "\n",
             "!" * 100 + "?" * 100, "\n", "é" * 700, "\n", "\u0301" * 64, "x\u0301" * 200, "\n", " " * 5000, "x\n",
             "\n" * 500, "https://example.com/" + "a/b/c/" * 200 + "?q=" + "x" * 300, "\n",
             "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3ODkrLw==" * 20, "\n",
             "deadbeef" * 200, "\n", "The end."]
    write("long_runs.txt", "".join(parts))


def main():
    tj = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        HERE, "node_modules", "@lenml", "tokenizer-deepseek_v3", "models", "tokenizer.json")
    os.makedirs(OUT, exist_ok=True)
    whitespace()
    special_tokens(tj)
    invalid_utf8()
    random_mix()
    long_runs()


if __name__ == "__main__":
    main()
