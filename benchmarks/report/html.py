"""The report as one self-contained HTML page: the markdown rendered, every plot embedded as a data URI."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import markdown

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.45;
       color: #1b1b1b; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #c8c8c8; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
code { background: #f4f4f4; padding: 0 0.2rem; }
pre { background: #f4f4f4; padding: 0.6rem; overflow-x: auto; }
img { max-width: 100%; height: auto; display: block; margin: 0.5rem 0; }
"""
IMAGE_SOURCE = re.compile(r'(<img\b[^>]*\bsrc=")([^"]+)(")')


def _embed(source: str, folder: Path) -> str:
    """A data URI for an image file beside the report; anything else is left as it is."""
    if source.startswith(("data:", "http://", "https://")):
        return source
    path = folder / source
    mime = "image/svg+xml" if path.suffix == ".svg" else f"image/{path.suffix.lstrip('.').lower()}"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def render(markdown_text: str, folder: Path, title: str = "TensorFlow vs PyTorch: measured comparison") -> str:
    """The page for a report whose images are files in folder."""
    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code", "toc"])
    body = IMAGE_SOURCE.sub(
        lambda match: match.group(1) + _embed(html.unescape(match.group(2)), folder) + match.group(3), body
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
