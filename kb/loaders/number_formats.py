"""Numbers as Word's list formats write them (``w:numFmt``): decimal, letters, Roman, Chinese counting
and legal numerals, 甲乙丙 and 子丑寅 series, circled and full-width digits.

``kb.loaders.docx_numbering`` labels a .docx's automatically numbered paragraphs with these. The
Chinese forms read back with ``kb.chinese_number`` (第十一章 -> 11), which chapter detection relies on.
"""

from __future__ import annotations

from collections.abc import Callable


def _decimal(n: int) -> str:
    return str(n)


def _letters(upper: bool) -> Callable[[int], str]:
    """A, B, ... Z, AA, BB, ... (Word repeats the letter); decimal past 26 repeats."""

    def render(n: int) -> str:
        if not 1 <= n <= 26 * 26:
            return str(n)
        letter = chr((ord("A") if upper else ord("a")) + (n - 1) % 26)
        return letter * ((n - 1) // 26 + 1)

    return render


_ROMAN = ((1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"),
          (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I"))


def _roman(upper: bool) -> Callable[[int], str]:
    """I, II, ... MMMCMXCIX; decimal outside 1..3999."""

    def render(n: int) -> str:
        if not 1 <= n <= 3999:
            return str(n)
        out = []
        for value, numeral in _ROMAN:
            count, n = divmod(n, value)
            out.append(numeral * count)
        text = "".join(out)
        return text if upper else text.lower()

    return render


def _chinese_section(n: int, digits: str, units: str, ten_alone: bool) -> str:
    """1..9999 in Chinese numerals with units (``units``: those of ten, a hundred and a thousand):
    101 -> 一百零一, 110 -> 一百一十, 10 -> 十
    (``ten_alone``) or 壹拾 (legal forms always write the digit)."""
    out: list[str] = []
    zero = False
    for power in (3, 2, 1, 0):
        digit = n // 10**power % 10
        if not digit:
            zero = bool(out)  # a 零 goes in only before a later non-zero digit
            continue
        if zero:
            out.append(digits[0])
            zero = False
        if not (power == 1 and digit == 1 and not out and ten_alone):
            out.append(digits[digit])
        if power:
            out.append(units[power - 1])
    return "".join(out)


def _chinese(digits: str, units: str, myriad: str, ten_alone: bool) -> Callable[[int], str]:
    """Chinese numerals with units up to 99999999 (一万零一); decimal outside 1..99999999."""

    def render(n: int) -> str:
        if not 1 <= n <= 99999999:
            return str(n)
        high, low = divmod(n, 10000)
        if not high:
            return _chinese_section(low, digits, units, ten_alone)
        text = _chinese_section(high, digits, units, ten_alone) + myriad
        if low:
            text += (digits[0] if low < 1000 else "") + _chinese_section(low, digits, units, False)
        return text

    return render


def _cycle(symbols: str) -> Callable[[int], str]:
    """A fixed series (甲乙丙..., 子丑寅...); decimal past its end."""
    return lambda n: symbols[n - 1] if 1 <= n <= len(symbols) else str(n)


def _digits(zero: str) -> Callable[[int], str]:
    """Decimal digits in another script: full-width ０-９, or ideographic 〇一二 digit by digit."""
    table = str.maketrans("0123456789", zero)
    return lambda n: str(n).translate(table)


def _circled(n: int) -> str:
    """① .. ⑳ (U+2460..2473); Word too writes plain digits past 20."""
    return chr(0x2460 + n - 1) if 1 <= n <= 20 else str(n)


_SIMPLE_CN = "零一二三四五六七八九"
_COUNTING = _chinese(_SIMPLE_CN, "十百千", "万", ten_alone=True)
FORMATS: dict[str, Callable[[int], str]] = {
    "decimal": _decimal,
    "decimalZero": lambda n: f"{n:02d}" if 0 <= n < 10 else str(n),
    "decimalHalfWidth": _decimal,
    "decimalFullWidth": _digits("０１２３４５６７８９"),
    "decimalFullWidth2": _digits("０１２３４５６７８９"),
    "decimalEnclosedCircle": _circled,
    "decimalEnclosedCircleChinese": _circled,
    "decimalEnclosedFullstop": lambda n: f"{n}.",
    "decimalEnclosedParen": lambda n: f"({n})",
    "upperLetter": _letters(upper=True),
    "lowerLetter": _letters(upper=False),
    "upperRoman": _roman(upper=True),
    "lowerRoman": _roman(upper=False),
    "chineseCounting": _COUNTING,
    "chineseCountingThousand": _COUNTING,
    "taiwaneseCounting": _COUNTING,
    "taiwaneseCountingThousand": _COUNTING,
    "japaneseCounting": _COUNTING,
    "chineseLegalSimplified": _chinese("零壹贰叁肆伍陆柒捌玖", "拾佰仟", "万", ten_alone=False),
    "ideographLegalTraditional": _chinese("零壹貳參肆伍陸柒捌玖", "拾佰仟", "萬", ten_alone=False),
    "ideographDigital": _digits("〇一二三四五六七八九"),
    "taiwaneseDigital": _digits("〇一二三四五六七八九"),
    "ideographTraditional": _cycle("甲乙丙丁戊己庚辛壬癸"),
    "ideographZodiac": _cycle("子丑寅卯辰巳午未申酉戌亥"),
    "none": lambda n: "",
}


def format_number(n: int, fmt: str) -> str:
    """``n`` as Word writes it in number format ``fmt``; decimal for a format not known here."""
    return FORMATS.get(fmt, _decimal)(n)
