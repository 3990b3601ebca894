"""Text from outside (names, captions, paths, task names of someone else's workspace) as a person sees it.

Such text may carry characters that act on the reader instead of being read: terminal escapes (``ESC [2J``
clears the screen, OSC 52 writes the clipboard), a newline that forges a second line, or a bidirectional
control (U+202E turns ``exe.png`` into ``gnp.exe`` on screen). Two ways out, one owner:

* ``for_terminal``: C0/C1 controls, DEL and the bidirectional controls written as Python escapes
  (``\\x1b``, ``\\n``, ``\\u202e``); every other character, accents and scripts included, as it is.
* ``for_html``: the bidirectional controls replaced by a visible mark (``[U+202E]``, ``for_page``), cut to
  a bound where asked (``alt=`` and ``title=`` attributes: ``ATTRIBUTE_CHARS``), then HTML-escaped.
"""

from __future__ import annotations

import html
import re

# LRE RLE PDF LRO RLO, LRI RLI FSI PDI, LRM RLM, ALM
BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
_BIDI = re.compile(f"[{BIDI_CONTROLS}]")
_UNSAFE_ON_TERMINAL = re.compile(f"[\x00-\x1f\x7f-\x9f{BIDI_CONTROLS}]")
ATTRIBUTE_CHARS = 300


def _escape(match: re.Match[str]) -> str:
    return ascii(match.group())[1:-1]


def for_terminal(text: object) -> str:
    """``text`` (made a string) with controls and bidirectional marks escaped, safe to print."""
    return _UNSAFE_ON_TERMINAL.sub(_escape, str(text))


def for_page(text: object) -> str:
    """``text`` (made a string) with each bidirectional control shown as ``[U+XXXX]`` (still to be
    HTML-escaped)."""
    return _BIDI.sub(lambda m: f"[U+{ord(m.group()):04X}]", str(text))


def bounded(text: str, limit: int = ATTRIBUTE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, the last one an ellipsis when cut."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def for_html(text: object, limit: int | None = None) -> str:
    """``text`` for an HTML page or attribute: bidirectional controls marked, cut to ``limit`` characters
    when given, escaped (quotes too)."""
    shown = for_page(text)
    return html.escape(shown if limit is None else bounded(shown, limit), quote=True)
