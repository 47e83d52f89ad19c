"""Reading a directory listing page (as served, or as Chromium's DOM dump) back into data."""

from __future__ import annotations

from html.parser import HTMLParser


class ListingPage(HTMLParser):
    """Collects every start tag, the (href, text) of each link, and the page's text."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.links: list[tuple[str, str]] = []
        self.text_parts: list[str] = []
        self._href: str | None = None
        self._link_text: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "a":
            self._href = dict(attrs).get("href")
            self._link_text = []

    def handle_endtag(self, tag):
        if tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._link_text)))
            self._href = None

    def handle_data(self, data):
        self.text_parts.append(data)
        if self._href is not None:
            self._link_text.append(data)

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def names(self) -> list[str]:
        """Link texts in page order, without the parent link."""
        return [text for href, text in self.links if href != "../"]
