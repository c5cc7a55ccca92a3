"""Synthetic GUI screenshots with grounding and referring records, written as WebDataset shards.

Every screen is an application window (title bar, optional menu bar, toolbar, tabs, sidebar and status
bar) whose content area holds form widgets laid out without overlap. Each sample is a pure function of
`(spec.seed, index)`, so a dataset's bytes do not depend on how it is sharded or how many processes
render it.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from imagelora_dist.data.shard_pool import render_shards
from imagelora_dist.data.shards import ShardIndex
from imagelora_dist.data.tasks import (
    GROUNDING,
    TASKS,
    box_center,
    grounding_answer,
    referring_answer,
    referring_instruction,
)
from imagelora_dist.errors import ImageLoRAError

RGB = tuple[int, int, int]
Box = tuple[int, int, int, int]

ELEMENT_TYPES = (
    "button", "input", "checkbox", "switch", "radio", "dropdown", "link", "text", "icon", "slider", "tab",
    "menu", "item",
)  # fmt: skip

# Caps keep a typo (an extra zero) from turning into hours of rendering or an unreadable screen.
_MAX_SIDE = 4096
_MIN_WIDTH, _MIN_HEIGHT = 200, 150
_MAX_ELEMENTS = 64
_MAX_INSTRUCTION_WORDS = 4096
# `gui`: application windows (this module); `shapes`: a few coloured shapes (shapes.py), for a base too
# small to read.
STYLES = ("gui", "shapes")
# `downstream`: the fine-tuning task's own instructions ("Click the Save button."); `pretrain`: the same
# questions in the pre-training tasks' words (`point`, `describe_at`), a task the base already knows.
PHRASINGS = ("downstream", "pretrain")


def _key(text: str) -> str:
    # "Name", "Name:" and "name" read the same to a user: uniqueness is checked on this key.
    return text.lower().rstrip(":.?! ").strip()


def _words(text: str) -> tuple[str, ...]:
    return tuple(w.strip() for w in text.split("|") if w.strip())


# --- word lists (ASCII only: the bundled font's coverage beyond ASCII is not something to rely on) ----

BUTTONS = _words(
    "Save|Open|Cancel|OK|Apply|Reset|Close|Next|Back|Continue|Submit|Send|Delete|Remove|Add|Create|Edit|"
    "Update|Upload|Download|Export|Import|Print|Share|Copy|Paste|Undo|Redo|Search|Sign in|Sign up|Log out|"
    "Retry|Refresh|Confirm|Accept|Decline|Browse...|Finish|Skip|Install|Uninstall|Connect|Disconnect|"
    "Subscribe|Archive|Restore|Duplicate|Rename|Move|Publish|Preview|Compare|Merge|Sync now|Start|Stop|"
    "Pause|Resume|Join|Invite|Approve|Reject|Checkout|Pay now|Add to cart|Save draft|Save as...|Get started|"
    "View all|Try again|Go back|Load more|Clear all|Select all|New folder|New file|Add user|Run|Build|Deploy|"
    "Test connection|Generate|Convert|Translate|Attach|Schedule|Reply|Forward|Mark as read|Add member|"
    "Change|Verify|Send code|Done|Discard|Keep editing|Save changes|Create project|Add payment method"
)
BUTTON_GROUPS = (
    ("Cancel", "Save"), ("Cancel", "OK"), ("Back", "Next"), ("Discard", "Save changes"), ("Cancel", "Apply"),
    ("Skip", "Continue"), ("Cancel", "Delete"), ("Decline", "Accept"), ("Reset", "Apply", "OK"),
    ("Cancel", "Create project"), ("Back", "Finish"), ("Keep editing", "Discard"), ("Cancel", "Send"),
    ("Help", "Cancel", "Print"), ("Cancel", "Sign in"), ("Cancel", "Install"),
)  # fmt: skip
CHECKBOXES = _words(
    "Remember me|Keep me signed in|Show hidden files|Enable notifications|Send usage statistics|"
    "Auto-save every 5 minutes|Check spelling as you type|Start at login|Show line numbers|Wrap long lines|"
    "Open links in new tab|Block pop-ups|Enable two-factor authentication|Subscribe to newsletter|"
    "I agree to the terms|Show preview pane|Play sounds|Sync across devices|Compress images|"
    "Include subfolders|Match case|Whole words only|Ask before closing|Show toolbar|Hide completed tasks|"
    "Allow comments|Make profile public|Email me a copy|Use system proxy|Enable hardware acceleration|"
    "Show grid|Snap to grid|Automatic updates|Restore previous session|Download over Wi-Fi only|Mute all|"
    "Show full path|Confirm before deleting|Print in color|Collate copies|Read receipts|Show weekends"
)
SWITCHES = _words(
    "Wi-Fi|Bluetooth|Airplane mode|Do not disturb|Location services|Night light|Battery saver|"
    "Auto-brightness|Dark theme|Push notifications|Auto-update apps|Mobile hotspot|Focus mode|"
    "Background sync|Cloud backup|Developer mode|Screen reader|High contrast|Live captions|Data saver"
)
# (label, placeholder, typed values)
FIELDS = (
    ("Name", "Your name", "Alice Johnson|Bob Smith|Maria Garcia"),
    ("Full name", "Enter full name", "Chen Wei|Priya Patel|Tom Becker"),
    ("First name", "e.g. Olivia", "Olivia|Lucas|Amara"),
    ("Last name", "e.g. Nguyen", "Nguyen|Kowalski|Okafor"),
    ("Email", "name@example.com", "alice@mail.com|j.doe@corp.net|sam@studio.io"),
    ("Username", "Choose a username", "alice_j|bsmith42|dev-maria"),
    ("Password", "Enter password", "********|************"),
    ("Phone", "+1 555 000 0000", "+44 20 7946 0958|+1 415 555 0132"),
    ("Address", "Street and number", "42 Market Street|7 Elm Road|221B Baker Street"),
    ("City", "e.g. Berlin", "Berlin|Toronto|Osaka|Lisbon"),
    ("Zip code", "ZIP", "94107|10115|SW1A 1AA"),
    ("Company", "Company name", "Acme Corp|Globex Ltd|Initech"),
    ("Website", "https://", "https://example.org|www.acme.com"),
    ("Subject", "Add a subject", "Weekly report|Lunch on Friday?|Invoice 4821"),
    ("Title", "Untitled", "Q3 roadmap|Trip to Rome|Release checklist"),
    ("Description", "Add a description", "Draft for review|Second revision"),
    ("Tags", "Add tags", "design, ui|urgent|travel, 2024"),
    ("Project name", "my-project", "website-redesign|data-pipeline"),
    ("File name", "document.txt", "report_final.pdf|photo_001.jpg|backup.zip"),
    ("Server", "hostname", "mail.example.com|10.0.0.12|db-01.internal"),
    ("Port", "8080", "443|5432|22"),
    ("API key", "Paste your key", "sk-4f9a...c21e|key_live_7b2d"),
    ("Display name", "How others see you", "Ali|Captain B|mgarcia"),
    ("Due date", "MM/DD/YYYY", "05/14/2024|11/30/2024"),
    ("Amount", "0.00", "125.00|49.99|1,200.00"),
    ("Quantity", "1", "3|12|250"),
    ("Card number", "1234 5678 9012 3456", "4242 4242 4242 4242"),
    ("Recipient", "To", "team@acme.com|Bob Smith"),
    ("Location", "Add location", "Room 4B|Zoom call|Main office"),
    ("Search", "Type keywords", "quarterly report|invoice|holiday"),
)
DROPDOWNS = (
    ("Language", "English|Deutsch|Francais|Espanol|Italiano|Portugues"),
    ("Theme", "Light|Dark|System default"),
    ("Country", "United States|Canada|Germany|Japan|Brazil|India"),
    ("Font size", "Small|Medium|Large|12 pt|14 pt"),
    ("Sort by", "Name|Date modified|Size|Type"),
    ("Time zone", "UTC|UTC+01:00 Berlin|UTC-05:00 New York|UTC+09:00 Tokyo"),
    ("Format", "PDF|PNG|CSV|Plain text|JPEG"),
    ("Priority", "Low|Normal|High|Urgent"),
    ("Currency", "USD|EUR|GBP|JPY"),
    ("Quality", "Auto|720p|1080p|4K"),
    ("Status", "To do|In progress|Done|Blocked"),
    ("Role", "Viewer|Editor|Admin|Owner"),
    ("Repeat", "Never|Daily|Weekly|Monthly"),
    ("Paper size", "A4|Letter|Legal|A3"),
    ("Encoding", "UTF-8|ASCII|Latin-1|UTF-16"),
    ("Start week on", "Sunday|Monday|Saturday"),
)
RADIOS = (
    ("Size", "Small|Medium|Large"),
    ("Plan", "Free|Pro|Enterprise"),
    ("Shipping", "Standard|Express|Overnight"),
    ("Orientation", "Portrait|Landscape"),
    ("Layout", "List|Grid|Details"),
    ("Frequency", "Hourly|Every day|Every week"),
    ("Payment", "Credit card|PayPal|Bank transfer"),
    ("Visibility", "Public|Private|Team only"),
    ("Units", "Metric|Imperial"),
    ("On startup", "Blank page|Home page|Last session"),
    ("Alignment", "Left|Center|Right|Justify"),
    ("Color mode", "Color|Grayscale|Black and white"),
    ("Pages", "All pages|Current page|Custom range"),
    ("Billing", "Monthly|Yearly"),
)
LINKS = _words(
    "Forgot password?|Learn more|Privacy policy|Terms of service|Help center|Create an account|View details|"
    "Show all|Contact support|Manage subscriptions|Edit profile|Release notes|Advanced options|"
    "Keyboard shortcuts|What's new|Report a problem|Open in browser|Download the app|See pricing|"
    "Documentation|Change email|Unsubscribe from all|View on GitHub|Restore defaults|Need help?|"
    "Resend code|Use another account|Show more"
)
TEXTS = _words(
    "Changes are saved automatically.|Your trial ends in 12 days.|Last synced 5 minutes ago.|"
    "No items match your filter.|Storage used: 3.2 GB of 15 GB|Passwords need at least 8 characters.|"
    "You have 3 unread messages.|This action cannot be undone.|Select the files you want to upload.|"
    "All systems operational.|Updates are available for 2 apps.|Connected to office-network|"
    "Your profile is 80% complete.|Backup completed on May 3.|Enter the code sent to your phone.|"
    "Drag files here to upload.|Version 2.4.1 (build 318)|Signed in as alice@example.com|"
    "The document was shared with you.|Printer is offline.|Battery: 64% remaining|Next meeting at 3:30 PM|"
    "Download speed: 12.4 MB/s|Free shipping on orders over $50|14 files, 28.6 MB|Last edited by Sam"
)
HEADINGS = _words(
    "Settings|Account|Preferences|Sign in|Create account|Profile|Notifications|Privacy and security|"
    "New project|Export options|Print|Network|Display|Sound|Billing|Team members|Upload files|"
    "Connect a device|General|Appearance|Checkout|Welcome back|Shipping details|Edit event|Compose message|"
    "Storage|Software update|Accessibility|Search results|Dashboard|Payment details|Personal information"
)
SLIDERS = _words(
    "Volume|Brightness|Zoom|Opacity|Speed|Contrast|Balance|Font scale|Bass|Treble|Saturation|Timeout|"
    "Sensitivity|Brush size|Playback rate"
)
TAB_SETS = (
    ("General", "Advanced", "Privacy", "Sharing", "Security"),
    ("Details", "Permissions", "History", "Versions"),
    ("Display", "Network", "Sound", "Keyboard", "Power"),
    ("Overview", "Activity", "Files", "Comments", "Members"),
    ("Profile", "Billing", "Integrations", "Appearance", "Shortcuts"),
    ("Home", "Recent", "Favorites", "Shared"),
)  # fmt: skip
SIDEBAR_SETS = (
    ("Inbox", "Starred", "Sent", "Drafts", "Spam", "Archive", "Trash"),
    ("Recent", "Documents", "Downloads", "Pictures", "Music", "Desktop", "Shared with me"),
    ("System", "Devices", "Network & internet", "Personalization", "Apps", "Accounts", "Time & language"),
    ("Overview", "Issues", "Pull requests", "Wiki", "Insights", "Members", "Releases"),
    ("Today", "Upcoming", "Anytime", "Someday", "Logbook", "Projects"),
    ("Library", "Playlists", "Artists", "Albums", "Podcasts", "Radio"),
)  # fmt: skip
MENU_SETS = (
    ("File", "Edit", "View", "Insert", "Format", "Tools", "Table", "Window", "Help"),
    ("File", "Edit", "View", "History", "Bookmarks", "Tools", "Help"),
    ("File", "Edit", "Selection", "View", "Go", "Run", "Terminal", "Help"),
    ("File", "Home", "Insert", "Design", "Layout", "Review", "View", "Help"),
    ("Mail", "Edit", "View", "Mailbox", "Message", "Format", "Window", "Help"),
    ("File", "Edit", "Image", "Layer", "Filters", "Window", "Help"),
)  # fmt: skip
APPS = _words(
    "Writer|Sheets|Mail|Files|Settings|Photos|Music|Calendar|Notes|Code|Browser|Terminal|Maps|Chat|Tasks|"
    "Slides|Contacts|Weather|Store|Paint"
)
DOCS = _words(
    "Untitled|Report.docx|Budget 2024.xlsx|notes.txt|main.py|Inbox|Quarterly review|Vacation photos|"
    "README.md|Invoice 4821|Meeting agenda|Project plan|index.html|Shopping list"
)
STATUS_TEXTS = _words(
    "Ready|Saved|3 items selected|Ln 14, Col 2|Page 1 of 4|Connected|Syncing...|12 messages|"
    "Word count: 1,204|100%|UTF-8|Offline|2 errors, 1 warning|Updated just now"
)
ICONS = (
    "settings", "search", "delete", "favorite", "home", "add", "notifications", "profile", "folder", "edit",
    "refresh", "download", "upload", "like", "lock", "mail", "calendar", "play", "info", "help", "menu",
    "more options", "share", "print", "save", "back", "forward", "filter", "bookmark", "image",
)  # fmt: skip
_WINDOW_ICONS = ("close", "minimize", "maximize")
# Filler prose for document panels: Latin, so it can never be mistaken for a target's English label.
_LOREM = tuple(
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et "
    "dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip ex ea "
    "commodo consequat duis aute irure in reprehenderit voluptate velit esse cillum fugiat nulla pariatur".split()
)
_ACCENTS = (
    (37, 99, 235), (22, 163, 74), (124, 58, 237), (220, 38, 38), (234, 88, 12), (13, 148, 136),
    (219, 39, 119), (2, 132, 199), (79, 70, 229), (101, 163, 13), (0, 120, 212), (181, 71, 8),
)  # fmt: skip
_WALLPAPERS = (
    ((30, 60, 114), (42, 82, 152)), ((15, 32, 39), (44, 83, 100)), ((131, 96, 195), (46, 191, 145)),
    ((255, 126, 95), (254, 180, 123)), ((67, 198, 172), (25, 22, 84)), ((34, 40, 49), (57, 62, 70)),
    ((0, 82, 212), (101, 199, 247)), ((238, 156, 167), (255, 221, 225)), ((96, 108, 136), (63, 76, 107)),
)  # fmt: skip

# --- the instruction preamble (context words) ------------------------------------------------------------

_ACTIVITIES = _words(
    "editing a document|reviewing a spreadsheet|sorting their email|changing system settings|"
    "filling in a sign-up form|organising project files|booking a business trip|preparing a presentation|"
    "updating their user profile|configuring a new printer|shopping for office supplies|writing some code|"
    "planning a team meeting|cleaning up old downloads|paying a monthly invoice|setting up a new laptop"
)
_DEVICES = _words("laptop|desktop computer|tablet|work station|shared office computer|home computer")
_WHEN = _words("before lunch|in the next few minutes|by the end of the day|today|before the meeting starts")
_PREFS = _words("default|simple|privacy-friendly|compact|accessible|familiar")
_SENTENCES = (
    "You are operating the {app} app on a {device}.",
    "The user is {activity}.",
    "They are in a hurry and want to finish {when}.",
    "Earlier they were {activity} and then switched to this window.",
    "The screenshot shows the current state of the screen.",
    "Look carefully at every part of the window.",
    "Only one action is needed for this step.",
    "The mouse pointer can move anywhere on the screen.",
    "Do not close any other windows that are open.",
    "The user prefers {pref} settings whenever there is a choice.",
    "This step is part of a longer task: {activity}.",
    "Nothing else on the screen should be changed.",
    "The {app} window has focus and is ready for input.",
    "A colleague asked for help with {activity} {when}.",
)
# Short sentences that make the word count exact, by length.
_FILLERS = {
    1: ("Thanks.", "Proceed.", "Continue.", "Okay."),
    2: ("Please continue.", "Go ahead.", "Work carefully.", "Please help."),
    3: ("Do it now.", "Please be careful.", "Thanks in advance.", "Take a look."),
    4: ("Here is the screen.", "The app is open.", "Be quick and precise.", "Nothing is loading now."),
    5: ("The window is fully visible.", "One click should be enough.", "Look carefully at the window."),
}


def context_preamble(rng: random.Random, n_words: int) -> str:
    """A plausible preamble of exactly `n_words` whitespace-separated words ("" for 0)."""
    out: list[str] = []
    left = n_words
    deck: list[str] = []
    misses = 0
    while left > 5 and misses < len(_SENTENCES):
        if not deck:  # a shuffled deck, so a long preamble does not repeat one sentence back to back
            deck = list(_SENTENCES)
            rng.shuffle(deck)
        sentence = deck.pop().format(
            app=rng.choice(APPS),
            device=rng.choice(_DEVICES),
            activity=rng.choice(_ACTIVITIES),
            when=rng.choice(_WHEN),
            pref=rng.choice(_PREFS),
        )
        k = len(sentence.split())
        if k > left:
            misses += 1
            continue
        misses = 0
        out.append(sentence)
        left -= k
    while left > 0:  # the tail, exact: short fillers instead of a sentence cut in half
        k = min(left, 5)
        out.append(rng.choice(_FILLERS[k]))
        left -= k
    return " ".join(out)


# --- spec ---------------------------------------------------------------------------------------------------


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class SynthSpec:
    """What to synthesize: sample count, sharding, screen size, clutter, instruction length, tasks, seed,
    and the screen style (`gui`: application windows; `shapes`: coloured shapes, see shapes.py)."""

    num_samples: int
    samples_per_shard: int = 256
    width: int = 448
    height: int = 336
    min_elements: int = 4
    max_elements: int = 10
    instruction_words: tuple[int, int] = (0, 0)
    tasks: tuple[str, ...] = ("grounding", "referring")
    seed: int = 0
    prefix: str = "train"
    style: str = "gui"
    # added after sets were made: left out of their index record while at the default (shard_pool.spec_record)
    phrasing: str = field(default="downstream", metadata={"omit_at_default": True})

    def __post_init__(self) -> None:
        # Lists arrive from YAML/JSON/argparse; store tuples so the spec stays hashable and asdict-stable.
        for name in ("instruction_words", "tasks"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

        def bad(name: str, why: str) -> ImageLoRAError:
            return ImageLoRAError(f"synth spec: {name}={getattr(self, name)!r}: {why}")

        for name, lo, hi in (
            ("num_samples", 1, None),
            ("samples_per_shard", 1, None),
            ("width", _MIN_WIDTH, _MAX_SIDE),
            ("height", _MIN_HEIGHT, _MAX_SIDE),
            ("min_elements", 1, _MAX_ELEMENTS),
            ("max_elements", 1, _MAX_ELEMENTS),
        ):
            value = getattr(self, name)
            if not _is_int(value):
                raise bad(name, "must be an integer")
            if value < lo or (hi is not None and value > hi):
                raise bad(name, f"must be in [{lo}, {hi}]" if hi is not None else f"must be >= {lo}")
        if self.max_elements < self.min_elements:
            raise bad("max_elements", f"must be >= min_elements ({self.min_elements})")
        iw = self.instruction_words
        if not (isinstance(iw, tuple) and len(iw) == 2 and all(_is_int(v) for v in iw)):
            raise bad("instruction_words", "must be two integers (min, max)")
        if not 0 <= iw[0] <= iw[1] <= _MAX_INSTRUCTION_WORDS:
            raise bad("instruction_words", f"need 0 <= min <= max <= {_MAX_INSTRUCTION_WORDS}")
        if not isinstance(self.tasks, tuple) or not self.tasks:
            raise bad("tasks", f"must be a non-empty list of {list(TASKS)}")
        for task in self.tasks:
            if task not in TASKS:
                raise bad("tasks", f"unknown task {task!r}; known: {list(TASKS)}")
        if len(set(self.tasks)) != len(self.tasks):
            raise bad("tasks", "lists a task twice")
        if not _is_int(self.seed):
            raise bad("seed", "must be an integer")
        if self.style not in STYLES:
            raise bad("style", f"unknown style; known: {list(STYLES)}")
        if self.phrasing not in PHRASINGS:
            raise bad("phrasing", f"unknown phrasing; known: {list(PHRASINGS)}")
        if not isinstance(self.prefix, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.prefix):
            raise bad("prefix", "must be a non-empty file-name stem of letters, digits, '_', '.', '-'")

    @property
    def num_shards(self) -> int:
        """Shards needed: the last one may be short."""
        return -(-self.num_samples // self.samples_per_shard)


# --- rendering ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Element:
    """One targetable element: type, visible text ("" for icons), pixel box (x0, y0, x1, y1), x1/y1 exclusive.

    `name` is what an instruction calls it (the icon name; the text otherwise), `state` is "checked",
    "unchecked", "on", "off", "selected", "placeholder" or "", and `region` where it sits on the screen.
    """

    type: str
    text: str
    box: Box
    name: str = ""
    state: str = ""
    region: str = "content"


@dataclass(frozen=True)
class _Theme:
    dark: bool
    window: RGB
    surface: RGB
    sidebar: RGB
    border: RGB
    text: RGB
    muted: RGB
    input_bg: RGB
    input_border: RGB
    accent: RGB
    accent_text: RGB
    link: RGB
    select: RGB
    title_bg: RGB
    title_text: RGB
    button_bg: RGB


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (round(a[0] + (b[0] - a[0]) * t), round(a[1] + (b[1] - a[1]) * t), round(a[2] + (b[2] - a[2]) * t))


def _pick_theme(rng: random.Random) -> _Theme:
    dark = rng.random() < 0.35
    accent = rng.choice(_ACCENTS)
    tint = rng.choice(((0, 0, 0), (0, 2, 6), (4, 2, 0), (0, 3, 2)))
    if dark:
        base = rng.randint(24, 40)
        window = (base + tint[0], base + tint[1], base + tint[2])
        surface = _mix(window, (255, 255, 255), 0.06)
        sidebar = _mix(window, (0, 0, 0), 0.25)
        text, muted = (232, 234, 237), (150, 155, 162)
        input_bg, input_border = _mix(window, (0, 0, 0), 0.35), _mix(window, (255, 255, 255), 0.22)
        border = _mix(window, (255, 255, 255), 0.14)
        link = _mix(accent, (255, 255, 255), 0.45)
        button_bg = _mix(window, (255, 255, 255), 0.14)
    else:
        base = rng.randint(242, 255)
        window = (min(255, base + tint[0]), min(255, base + tint[1] - 1), min(255, base + tint[2] - 1))
        surface = _mix(window, (0, 0, 0), rng.uniform(0.04, 0.09))
        sidebar = _mix(window, (0, 0, 0), rng.uniform(0.03, 0.06))
        text, muted = rng.choice(((24, 24, 27), (33, 37, 41), (17, 24, 39))), (107, 114, 128)
        input_bg, input_border = (255, 255, 255), (rng.randint(175, 205),) * 3
        border = _mix(window, (0, 0, 0), 0.16)
        link = _mix(accent, (0, 0, 0), 0.1)
        button_bg = _mix(window, (0, 0, 0), 0.08)
    if rng.random() < 0.3:  # coloured title bar (Windows accent colour, branded apps)
        title_bg, title_text = _mix(accent, (0, 0, 0), 0.15), (255, 255, 255)
    else:
        title_bg, title_text = _mix(surface, (0, 0, 0), 0.05 if not dark else 0.3), text
    select = _mix(window, accent, 0.22 if not dark else 0.35)
    return _Theme(
        dark, window, surface, sidebar, border, text, muted, input_bg, input_border, accent, (255, 255, 255),
        link, select, title_bg, title_text, button_bg,
    )  # fmt: skip


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled FreeType font: scalable, offline, and the same glyphs on every machine.
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=8192)
def _word_layout(text: str, size: int) -> tuple[tuple[tuple[str, int], ...], int]:
    """Word x offsets and total advance of `text` at `size`, with a readable word gap."""
    # The bundled font's space is 2 px below 12 px, so "Zip code" would read "Zipcode": words are
    # placed one by one with a gap of at least ~0.27 em.
    font = _font(size)
    gap = max(math.ceil(font.getlength(" ")), round(size * 0.27))
    out, x = [], 0
    for word in text.split(" "):
        if word:
            out.append((word, x))
            x += math.ceil(font.getlength(word))
        x += gap
    return tuple(out), max(0, x - gap)


def _draw_icon(d: ImageDraw.ImageDraw, name: str, x: int, y: int, s: int, fg: RGB, bg: RGB) -> None:
    """Draw glyph `name` inside the square [x, x+s) x [y, y+s)."""
    lw = max(1, round(s / 9))
    m = max(1, lw // 2 + 1)
    x0, y0, x1, y1 = x + m, y + m, x + s - 1 - m, y + s - 1 - m
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    w, h = x1 - x0, y1 - y0

    def ln(*pts: float) -> None:
        d.line([(pts[i], pts[i + 1]) for i in range(0, len(pts), 2)], fill=fg, width=lw, joint="curve")

    if name == "settings":
        for k in range(8):
            a = k * math.pi / 4
            d.line(
                [
                    (cx + math.cos(a) * r * 0.5, cy + math.sin(a) * r * 0.5),
                    (cx + math.cos(a) * r, cy + math.sin(a) * r),
                ],
                fill=fg,
                width=max(2, round(s / 6)),
            )
        d.ellipse([cx - r * 0.72, cy - r * 0.72, cx + r * 0.72, cy + r * 0.72], fill=fg)
        d.ellipse([cx - r * 0.3, cy - r * 0.3, cx + r * 0.3, cy + r * 0.3], fill=bg)
    elif name == "search":
        rr = r * 0.62
        d.ellipse([x0, y0, x0 + 2 * rr, y0 + 2 * rr], outline=fg, width=lw)
        ln(x0 + 2 * rr * 0.85, y0 + 2 * rr * 0.85, x1, y1)
    elif name in ("delete",):
        ln(x0, y0 + h * 0.18, x1, y0 + h * 0.18)
        d.rectangle([cx - w * 0.15, y0, cx + w * 0.15, y0 + h * 0.18], outline=fg, width=lw)
        d.polygon(
            [
                (x0 + w * 0.12, y0 + h * 0.3),
                (x1 - w * 0.12, y0 + h * 0.3),
                (x1 - w * 0.2, y1),
                (x0 + w * 0.2, y1),
            ],
            outline=fg,
            width=lw,
        )
        ln(cx, y0 + h * 0.45, cx, y1 - h * 0.15)
    elif name == "favorite":
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rad = r if k % 2 == 0 else r * 0.45
            pts.append((cx + math.cos(a) * rad, cy + 0.08 * h + math.sin(a) * rad))
        d.polygon(pts, fill=fg)
    elif name == "home":
        d.polygon([(cx, y0), (x1, cy), (x0, cy)], fill=fg)
        d.rectangle([x0 + w * 0.18, cy, x1 - w * 0.18, y1], fill=fg)
        d.rectangle([cx - w * 0.1, y1 - h * 0.32, cx + w * 0.1, y1], fill=bg)
    elif name == "add":
        t = max(2, lw + 1)
        d.rectangle([cx - t / 2, y0, cx + t / 2, y1], fill=fg)
        d.rectangle([x0, cy - t / 2, x1, cy + t / 2], fill=fg)
    elif name == "notifications":
        d.chord([x0 + w * 0.15, y0 + h * 0.05, x1 - w * 0.15, y1 + h * 0.3], 180, 360, fill=fg)
        d.rectangle([x0 + w * 0.15, cy + h * 0.1, x1 - w * 0.15, y1 - h * 0.18], fill=fg)
        ln(x0, y1 - h * 0.18, x1, y1 - h * 0.18)
        d.ellipse([cx - w * 0.12, y1 - h * 0.15, cx + w * 0.12, y1], fill=fg)
    elif name == "profile":
        d.ellipse([cx - r * 0.42, y0, cx + r * 0.42, y0 + r * 0.84], fill=fg)
        d.chord([x0, cy + h * 0.05, x1, y1 + h * 0.5], 180, 360, fill=fg)
    elif name == "folder":
        d.polygon(
            [
                (x0, y0 + h * 0.12),
                (x0 + w * 0.4, y0 + h * 0.12),
                (x0 + w * 0.5, y0 + h * 0.27),
                (x1, y0 + h * 0.27),
                (x1, y1 - h * 0.08),
                (x0, y1 - h * 0.08),
            ],
            fill=fg,
        )
        ln(x0 + lw, y0 + h * 0.38, x1 - lw, y0 + h * 0.38)
        d.line([(x0 + lw, y0 + h * 0.38), (x1 - lw, y0 + h * 0.38)], fill=bg, width=max(1, lw // 2))
    elif name == "edit":
        t = w * 0.16
        d.polygon(
            [(x1 - t, y0), (x1, y0 + t), (x0 + t * 1.3, y1 - t * 0.3), (x0 + t * 0.3, y1 - t * 1.3)], fill=fg
        )
        d.polygon([(x0 + t * 0.3, y1 - t * 1.3), (x0 + t * 1.3, y1 - t * 0.3), (x0, y1)], fill=fg)
        ln(x0 + w * 0.55, y1, x1, y1)
    elif name == "refresh":
        d.arc([x0, y0, x1, y1], 40, 340, fill=fg, width=lw + 1)
        ax, ay = cx + math.cos(math.radians(340)) * r, cy + math.sin(math.radians(340)) * r
        d.polygon([(ax + w * 0.22, ay), (ax - w * 0.14, ay), (ax + w * 0.06, ay + h * 0.3)], fill=fg)
    elif name in ("download", "upload"):
        top, bot = (y0, y1 - h * 0.25) if name == "download" else (y1 - h * 0.25, y0)
        ln(cx, top, cx, bot)
        sgn = 1 if name == "download" else -1
        d.polygon(
            [(cx - w * 0.3, bot - sgn * h * 0.3), (cx + w * 0.3, bot - sgn * h * 0.3), (cx, bot + sgn * lw)],
            fill=fg,
        )
        ln(x0, y1, x1, y1)
    elif name == "like":
        rr = w * 0.27
        d.ellipse([x0, y0 + h * 0.08, x0 + 2 * rr, y0 + h * 0.08 + 2 * rr], fill=fg)
        d.ellipse([x1 - 2 * rr, y0 + h * 0.08, x1, y0 + h * 0.08 + 2 * rr], fill=fg)
        d.polygon(
            [(x0 + w * 0.02, y0 + h * 0.08 + rr * 1.2), (x1 - w * 0.02, y0 + h * 0.08 + rr * 1.2), (cx, y1)],
            fill=fg,
        )
    elif name == "lock":
        d.arc([x0 + w * 0.2, y0, x1 - w * 0.2, y0 + h * 0.7], 180, 360, fill=fg, width=lw + 1)
        ln(x0 + w * 0.2 + lw / 2, y0 + h * 0.35, x0 + w * 0.2 + lw / 2, y0 + h * 0.45)
        ln(x1 - w * 0.2 - lw / 2, y0 + h * 0.35, x1 - w * 0.2 - lw / 2, y0 + h * 0.45)
        d.rectangle([x0 + w * 0.08, y0 + h * 0.42, x1 - w * 0.08, y1], fill=fg)
        d.ellipse([cx - w * 0.08, cy + h * 0.08, cx + w * 0.08, cy + h * 0.24], fill=bg)
    elif name == "mail":
        d.rectangle([x0, y0 + h * 0.15, x1, y1 - h * 0.12], outline=fg, width=lw)
        ln(x0, y0 + h * 0.15, cx, cy + h * 0.05, x1, y0 + h * 0.15)
    elif name == "calendar":
        d.rectangle([x0, y0 + h * 0.12, x1, y1], outline=fg, width=lw)
        d.rectangle([x0, y0 + h * 0.12, x1, y0 + h * 0.34], fill=fg)
        ln(x0 + w * 0.28, y0, x0 + w * 0.28, y0 + h * 0.2)
        ln(x1 - w * 0.28, y0, x1 - w * 0.28, y0 + h * 0.2)
        t = max(1.0, w * 0.09)
        for gx in (0.3, 0.7) if s < 18 else (0.28, 0.5, 0.72):
            for gy in (0.56, 0.8):
                px, py = x0 + w * gx, y0 + h * gy
                d.rectangle([px - t / 2, py - t / 2, px + t / 2, py + t / 2], fill=fg)
    elif name == "play":
        d.polygon([(x0 + w * 0.18, y0), (x1, cy), (x0 + w * 0.18, y1)], fill=fg)
    elif name in ("info", "help"):
        d.ellipse([x0, y0, x1, y1], outline=fg, width=lw)
        glyph = "i" if name == "info" else "?"
        d.text((cx, cy + 0.5), glyph, fill=fg, font=_font(max(8, round(s * 0.6))), anchor="mm")
    elif name == "menu":
        for fy in (0.15, 0.5, 0.85):
            ln(x0, y0 + h * fy, x1, y0 + h * fy)
    elif name == "more options":
        t = max(1.5, s / 10)
        for fx in (0.15, 0.5, 0.85):
            px = x0 + w * fx
            d.ellipse([px - t, cy - t, px + t, cy + t], fill=fg)
    elif name == "share":
        pts = [(x1 - w * 0.15, y0 + h * 0.15), (x0 + w * 0.15, cy), (x1 - w * 0.15, y1 - h * 0.15)]
        ln(*pts[0], *pts[1], *pts[2])
        t = w * 0.16
        for px, py in pts:
            d.ellipse([px - t, py - t, px + t, py + t], fill=fg)
    elif name == "print":
        d.rectangle([x0 + w * 0.22, y0, x1 - w * 0.22, y0 + h * 0.3], outline=fg, width=lw)
        d.rounded_rectangle([x0, y0 + h * 0.3, x1, y1 - h * 0.2], radius=max(1, s // 8), fill=fg)
        d.rectangle([x0 + w * 0.22, y0 + h * 0.6, x1 - w * 0.22, y1], fill=bg, outline=fg, width=lw)
    elif name == "save":
        d.polygon([(x0, y0), (x1 - w * 0.2, y0), (x1, y0 + h * 0.2), (x1, y1), (x0, y1)], fill=fg)
        d.rectangle([x0 + w * 0.22, y0 + lw, x1 - w * 0.3, y0 + h * 0.32], fill=bg)
        d.rectangle([x0 + w * 0.2, y0 + h * 0.55, x1 - w * 0.2, y1 - lw], fill=bg)
    elif name in ("back", "forward"):
        a, b = (x1, x0) if name == "back" else (x0, x1)
        ln(a, cy, b, cy)
        sgn = 1 if name == "back" else -1
        ln(b + sgn * w * 0.42, y0 + h * 0.1, b, cy, b + sgn * w * 0.42, y1 - h * 0.1)
    elif name == "filter":
        d.polygon(
            [
                (x0, y0),
                (x1, y0),
                (cx + w * 0.1, cy),
                (cx + w * 0.1, y1),
                (cx - w * 0.1, y1 - h * 0.12),
                (cx - w * 0.1, cy),
            ],
            fill=fg,
        )
    elif name == "bookmark":
        d.polygon(
            [
                (x0 + w * 0.15, y0),
                (x1 - w * 0.15, y0),
                (x1 - w * 0.15, y1),
                (cx, y1 - h * 0.3),
                (x0 + w * 0.15, y1),
            ],
            fill=fg,
        )
    elif name == "image":
        d.rectangle([x0, y0 + h * 0.1, x1, y1 - h * 0.1], outline=fg, width=lw)
        d.polygon(
            [
                (x0 + lw, y1 - h * 0.1 - lw),
                (x0 + w * 0.38, cy - h * 0.02),
                (x0 + w * 0.65, y1 - h * 0.1 - lw),
            ],
            fill=fg,
        )
        d.ellipse([x1 - w * 0.32, y0 + h * 0.22, x1 - w * 0.14, y0 + h * 0.4], fill=fg)
    elif name == "close":
        ln(x0 + w * 0.1, y0 + h * 0.1, x1 - w * 0.1, y1 - h * 0.1)
        ln(x0 + w * 0.1, y1 - h * 0.1, x1 - w * 0.1, y0 + h * 0.1)
    elif name == "minimize":
        ln(x0 + w * 0.1, cy, x1 - w * 0.1, cy)
    elif name == "maximize":
        d.rectangle([x0 + w * 0.12, y0 + h * 0.12, x1 - w * 0.12, y1 - h * 0.12], outline=fg, width=lw)
    else:  # pragma: no cover - every name above is drawn
        raise ValueError(f"no glyph for icon {name!r}")


class _Screen:
    """Drawing state of one screenshot: canvas, theme, fonts, and the elements placed so far."""

    def __init__(self, rng: random.Random, width: int, height: int) -> None:
        self.rng = rng
        self.w, self.h = width, height
        # Bigger screens show more content at a moderately larger UI scale (like a HiDPI setting), not a
        # blown-up 448x336 layout.
        self.scale = max(0.8, min(2.5, min(width / 448, height / 336) ** 0.5))
        self.theme = _pick_theme(rng)
        self.base = max(9, round(rng.choice((11, 12, 12, 13)) * self.scale))
        self.img = Image.new("RGB", (width, height), self.theme.window)
        self.d = ImageDraw.Draw(self.img)
        self.elements: list[Element] = []
        self.used_text: set[str] = set()
        self.used_icons: set[str] = set()

    def px(self, v: float) -> int:
        return max(1, round(v * self.scale))

    def font(self, delta: int = 0) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
        return _font(max(8, self.base + round(delta * self.scale)))

    def text_w(self, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
        return _word_layout(text, font.size)[1]

    def taken(self, text: str) -> bool:
        return _key(text) in self.used_text

    def free(self, candidates: Sequence[str]) -> list[str]:
        # Unique visible text across the whole screen keeps every target unambiguous.
        return [c for c in candidates if not self.taken(c)]

    def pick(self, candidates: Sequence[str], fits: Callable[[str], bool] | None = None) -> str | None:
        options = [c for c in self.free(candidates) if fits is None or fits(c)]
        return self.rng.choice(options) if options else None

    def pick_icon(self, pool: Sequence[str] = ICONS) -> str | None:
        options = [n for n in pool if n not in self.used_icons]
        if not options:
            return None
        name = self.rng.choice(options)
        self.used_icons.add(name)
        return name

    def add(self, type_: str, text: str, box: Sequence[float], **kw: str) -> Element:
        x0, y0, x1, y1 = (
            int(math.floor(box[0])),
            int(math.floor(box[1])),
            int(math.ceil(box[2])),
            int(math.ceil(box[3])),
        )
        el = Element(type_, text, (max(0, x0), max(0, y0), min(self.w, x1), min(self.h, y1)), **kw)
        if text:
            self.used_text.add(_key(text))
        self.elements.append(el)
        return el

    def text(
        self,
        x: float,
        y: float,
        text: str,
        font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
        fill: RGB,
        anchor: str = "lm",
    ) -> Box:
        """Draw text; return its ink box (x1/y1 exclusive)."""
        words, width = _word_layout(text, font.size)
        x0 = round(x - {"l": 0, "m": width / 2, "r": width}[anchor[0]])
        y = round(y)
        wa = "l" + anchor[1]
        box = [math.inf, math.inf, -math.inf, -math.inf]
        for word, off in words:
            self.d.text((x0 + off, y), word, font=font, fill=fill, anchor=wa)
            left, top, right, bottom = font.getbbox(word, anchor=wa)
            box = [
                min(box[0], x0 + off + left),
                min(box[1], y + top),
                max(box[2], x0 + off + right),
                max(box[3], y + bottom),
            ]
        return (math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3]))

    # --- window chrome -------------------------------------------------------------------------------------

    def desktop(self) -> Box:
        rng, w, h = self.rng, self.w, self.h
        c1, c2 = rng.choice(_WALLPAPERS)
        if rng.random() < 0.5:
            c1, c2 = c2, c1
        mask = Image.linear_gradient("L").resize((w, h))
        self.img.paste(Image.composite(Image.new("RGB", (w, h), c2), Image.new("RGB", (w, h), c1), mask))
        for _ in range(rng.randint(0, 3)):  # soft shapes on the wallpaper
            r = rng.randint(h // 6, h // 2)
            cx, cy = rng.randint(0, w), rng.randint(0, h)
            self.d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_mix(c1, c2, rng.uniform(0.2, 0.8)))
        bottom = h
        if rng.random() < 0.5:
            bottom = self.taskbar()
        if rng.random() < 0.4:
            win = (0, 0, w, bottom)
        else:
            ml, mr = (
                rng.randint(self.px(6), max(self.px(6), w // 14)),
                rng.randint(self.px(6), max(self.px(6), w // 14)),
            )
            mt, mb = (
                rng.randint(self.px(6), max(self.px(6), h // 14)),
                rng.randint(self.px(6), max(self.px(6), h // 14)),
            )
            win = (ml, mt, w - mr, bottom - mb)
            shadow = _mix(c1, (0, 0, 0), 0.45)
            self.d.rectangle([win[0] + 2, win[1] + 3, win[2] + 1, win[3] + 2], fill=shadow)
        self.d.rectangle(
            [win[0], win[1], win[2] - 1, win[3] - 1], fill=self.theme.window, outline=self.theme.border
        )
        return win

    def taskbar(self) -> int:
        rng, t = self.rng, self.theme
        th = self.px(rng.choice((22, 24, 26)))
        y0 = self.h - th
        bar = (24, 26, 32) if t.dark or rng.random() < 0.6 else (228, 230, 235)
        fg = (240, 240, 240) if sum(bar) < 300 else (30, 30, 30)
        self.d.rectangle([0, y0, self.w - 1, self.h - 1], fill=bar)
        x = self.px(8)
        s = th - self.px(8)
        for _ in range(rng.randint(3, 6)):  # app launchers: plain coloured tiles, never a named glyph
            self.d.rounded_rectangle(
                [x, y0 + (th - s) // 2, x + s, y0 + (th - s) // 2 + s],
                radius=max(1, s // 4),
                fill=rng.choice(_ACCENTS),
            )
            x += s + self.px(6)
        clock = f"{rng.randint(1, 12)}:{rng.randint(0, 59):02d} {rng.choice(('AM', 'PM'))}"
        box = self.text(self.w - self.px(8), y0 + th / 2, clock, self.font(-1), fg, anchor="rm")
        self.add("text", clock, box, region="taskbar")
        return y0

    def title_bar(self, win: Box) -> int:
        rng, t, d = self.rng, self.theme, self.d
        style = rng.choice(("win", "mac", "gnome"))
        th = self.px({"win": 26, "mac": 24, "gnome": 30}[style])
        x0, y0, x1, _ = win
        d.rectangle([x0, y0, x1 - 1, y0 + th - 1], fill=t.title_bg)
        d.line([(x0, y0 + th - 1), (x1 - 1, y0 + th - 1)], fill=_mix(t.title_bg, (0, 0, 0), 0.12))
        font = self.font(0 if style != "gnome" else 1)
        left, right = x0 + self.px(8), x1 - self.px(8)
        if style == "win":
            cw = self.px(30)
            for i, name in enumerate(("close", "minimize", "maximize")):
                bx1 = x1 - 1 - [0, 2, 1][i] * cw
                bx0 = bx1 - cw
                if name == "close" and rng.random() < 0.3:
                    d.rectangle([bx0, y0, bx1 - 1, y0 + th - 2], fill=(196, 43, 28))
                s = self.px(10)
                _draw_icon(d, name, bx0 + (cw - s) // 2, y0 + (th - s) // 2, s, t.title_text, t.title_bg)
                self.add("icon", "", (bx0, y0, bx1, y0 + th - 1), name=name, region="title bar")
            right = x1 - 3 * cw - self.px(6)
            s = self.px(14)  # app glyph, part of the title
            d.rounded_rectangle(
                [left, y0 + (th - s) // 2, left + s, y0 + (th - s) // 2 + s],
                radius=max(1, s // 4),
                fill=t.accent,
            )
            left += s + self.px(6)
            centered = False
        elif style == "mac":
            s, gap = self.px(12), self.px(8)
            for i, (name, col) in enumerate(
                (("close", (255, 95, 87)), ("minimize", (254, 188, 46)), ("maximize", (40, 200, 64)))
            ):
                bx = left + i * (s + gap)
                by = y0 + (th - s) // 2
                d.ellipse([bx, by, bx + s - 1, by + s - 1], fill=col, outline=_mix(col, (0, 0, 0), 0.15))
                self.add("icon", "", (bx, by, bx + s, by + s), name=name, region="title bar")
            left += 3 * s + 2 * gap + self.px(10)
            centered = True
        else:
            s = self.px(20)
            bx = right - s
            by = y0 + (th - s) // 2
            d.ellipse([bx, by, bx + s - 1, by + s - 1], fill=_mix(t.title_bg, t.title_text, 0.15))
            gs = self.px(10)
            _draw_icon(d, "close", bx + (s - gs) // 2, by + (s - gs) // 2, gs, t.title_text, t.title_bg)
            self.add("icon", "", (bx, by, bx + s, by + s), name="close", region="title bar")
            gx = bx - self.px(10) - gs
            for name in ("maximize", "minimize"):
                _draw_icon(d, name, gx, y0 + (th - gs) // 2, gs, t.title_text, t.title_bg)
                self.add(
                    "icon",
                    "",
                    (gx, y0 + (th - gs) // 2, gx + gs, y0 + (th - gs) // 2 + gs),
                    name=name,
                    region="title bar",
                )
                gx -= self.px(12) + gs
            right = gx + gs
            centered = True
        self.used_icons.update(_WINDOW_ICONS)
        app, doc = rng.choice(APPS), rng.choice(DOCS)
        room = (
            min(right - x0 - (x1 - x0) / 2, (x0 + x1) / 2 - left) * 2 if centered else right - left
        ) - self.px(6)
        for title in (f"{doc} - {app}", app) if rng.random() < 0.7 else (app,):
            if self.text_w(title, font) <= room and not self.taken(title):
                if centered:
                    box = self.text((x0 + x1) / 2, y0 + th / 2, title, font, t.title_text, anchor="mm")
                else:
                    box = self.text(left, y0 + th / 2, title, font, t.title_text)
                self.add("text", title, box, region="title bar")
                break
        return y0 + th

    def menu_bar(self, win: Box, y: int) -> int:
        rng, t = self.rng, self.theme
        mh = self.px(rng.choice((18, 20, 22)))
        x0, _, x1, _ = win
        bg = t.window if rng.random() < 0.5 else t.surface
        self.d.rectangle([x0 + 1, y, x1 - 2, y + mh - 1], fill=bg)
        font = self.font(-1 if rng.random() < 0.5 else 0)
        pad = self.px(7)
        x = x0 + self.px(4)
        for label in rng.choice(MENU_SETS):
            tw = self.text_w(label, font)
            if x + tw + 2 * pad > x1 - self.px(4):
                break
            if self.taken(label):
                continue
            self.text(x + pad, y + mh / 2, label, font, t.text)
            self.add("menu", label, (x, y + 1, x + tw + 2 * pad, y + mh - 1), region="menu bar")
            x += tw + 2 * pad
        self.d.line([(x0 + 1, y + mh - 1), (x1 - 2, y + mh - 1)], fill=t.border)
        return y + mh

    def toolbar(self, win: Box, y: int) -> int:
        rng, t, d = self.rng, self.theme, self.d
        bh = self.px(rng.choice((28, 30, 34)))
        x0, _, x1, _ = win
        d.rectangle([x0 + 1, y, x1 - 2, y + bh - 1], fill=t.surface)
        d.line([(x0 + 1, y + bh - 1), (x1 - 2, y + bh - 1)], fill=t.border)
        s = self.px(rng.choice((14, 16, 18)))
        gap = self.px(rng.choice((10, 12, 14)))
        right = x1 - self.px(8)
        if rng.random() < 0.45:  # a search box at the right end of the toolbar
            fw = self.px(rng.choice((110, 130, 150)))
            if right - fw > x0 + self.px(120):
                font = self.font(-1)
                text = self.pick(
                    ("Search", "Search files", "Search mail", "Search settings", "Type to search")
                )
                if text:
                    fh = bh - self.px(10)
                    fx0, fy0 = right - fw, y + (bh - fh) // 2
                    d.rounded_rectangle(
                        [fx0, fy0, right - 1, fy0 + fh - 1],
                        radius=fh // 2,
                        fill=t.input_bg,
                        outline=t.input_border,
                    )
                    gs = max(8, fh - self.px(10))
                    # a decorative magnifier inside the field: part of the input, so the icon name is reserved
                    _draw_icon(d, "search", fx0 + self.px(6), fy0 + (fh - gs) // 2, gs, t.muted, t.input_bg)
                    self.used_icons.add("search")
                    self.text(fx0 + self.px(10) + gs, fy0 + fh / 2, text, font, t.muted)
                    self.add(
                        "input", text, (fx0, fy0, right, fy0 + fh), state="placeholder", region="toolbar"
                    )
                    right = fx0 - self.px(10)
        x = x0 + self.px(10)
        for _ in range(rng.randint(3, 9)):
            if x + s > right:
                break
            name = self.pick_icon()
            if name is None:
                break
            iy = y + (bh - s) // 2
            _draw_icon(d, name, x, iy, s, t.text, t.surface)
            self.add("icon", "", (x, iy, x + s, iy + s), name=name, region="toolbar")
            x += s + gap
            if rng.random() < 0.2 and x + gap < right:  # group separator
                d.line([(x - gap // 2, y + self.px(6)), (x - gap // 2, y + bh - self.px(7))], fill=t.border)
                x += gap // 2
        return y + bh

    def status_bar(self, win: Box, bottom: int) -> int:
        t = self.theme
        sh = self.px(20)
        x0, _, x1, _ = win
        y = bottom - sh
        self.d.rectangle([x0 + 1, y, x1 - 2, bottom - 2], fill=t.surface)
        self.d.line([(x0 + 1, y), (x1 - 2, y)], fill=t.border)
        font = self.font(-2)
        left = self.pick(STATUS_TEXTS)
        if left:
            box = self.text(x0 + self.px(8), y + sh / 2, left, font, t.muted)
            self.add("text", left, box, region="status bar")
            right = self.pick(STATUS_TEXTS, lambda s: self.text_w(s, font) < (x1 - x0) / 2 - self.px(20))
            if right and self.rng.random() < 0.6:
                box = self.text(x1 - self.px(10), y + sh / 2, right, font, t.muted, anchor="rm")
                self.add("text", right, box, region="status bar")
        return y

    def sidebar(self, y0: int, x0: int, y1: int) -> int:
        rng, t, d = self.rng, self.theme, self.d
        sw = self.px(rng.choice((100, 112, 124, 136)))
        d.rectangle([x0 + 1, y0, x0 + sw - 1, y1 - 2], fill=t.sidebar)
        d.line([(x0 + sw - 1, y0), (x0 + sw - 1, y1 - 2)], fill=t.border)
        font = self.font(-1)
        ih = self.px(rng.choice((22, 24, 26)))
        y = y0 + self.px(8)
        with_icons = rng.random() < 0.5
        gs = self.px(12)
        items = [i for i in rng.choice(SIDEBAR_SETS)]
        selected = rng.randrange(len(items))
        for k, label in enumerate(items):
            if y + ih > y1 - self.px(6):
                break
            tx = x0 + self.px(12) + (gs + self.px(6) if with_icons else 0)
            if self.taken(label) or tx + self.text_w(label, font) > x0 + sw - self.px(10):
                continue
            box = (x0 + self.px(5), y, x0 + sw - self.px(6), y + ih)
            fg = t.text
            if k == selected:
                d.rounded_rectangle(
                    [box[0], box[1], box[2] - 1, box[3] - 1], radius=self.px(4), fill=t.select
                )
            if with_icons:
                name = self.pick_icon()
                if name:  # the glyph belongs to the item; reserving its name keeps icon targets unique
                    _draw_icon(
                        d,
                        name,
                        x0 + self.px(11),
                        y + (ih - gs) // 2,
                        gs,
                        t.muted,
                        t.select if k == selected else t.sidebar,
                    )
            self.text(tx, y + ih / 2, label, font, fg)
            self.add("item", label, box, state="selected" if k == selected else "", region="sidebar")
            y += ih + self.px(2)
        return x0 + sw

    def tabs(self, x0: int, y: int, x1: int) -> int:
        rng, t, d = self.rng, self.theme, self.d
        th = self.px(rng.choice((24, 26)))
        d.rectangle([x0 + 1, y, x1 - 2, y + th - 1], fill=t.surface)
        font = self.font(-1)
        pad = self.px(12)
        x = x0 + self.px(6)
        labels = rng.choice(TAB_SETS)
        active = rng.randrange(min(3, len(labels)))
        underline = rng.random() < 0.5
        for k, label in enumerate(labels):
            tw = self.text_w(label, font)
            if x + tw + 2 * pad > x1 - self.px(6):
                break
            if self.taken(label):
                continue
            box = (x, y + self.px(3), x + tw + 2 * pad, y + th)
            if k == active:
                if underline:
                    d.rectangle([box[0], box[3] - self.px(2), box[2] - 1, box[3] - 1], fill=t.accent)
                else:
                    d.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=t.window, outline=t.border)
                    d.line([(box[0] + 1, box[3] - 1), (box[2] - 2, box[3] - 1)], fill=t.window)
            self.text(
                x + pad,
                y + self.px(3) + (th - self.px(3)) / 2,
                label,
                font,
                t.text if k == active else t.muted,
            )
            self.add("tab", label, box, state="selected" if k == active else "", region="tabs")
            x += tw + 2 * pad + self.px(2)
        d.line([(x0 + 1, y + th - 1), (x1 - 2, y + th - 1)], fill=t.border)
        return y + th

    # --- content widgets -----------------------------------------------------------------------------------

    def button(
        self,
        x: int,
        y: int,
        label: str,
        h: int,
        style: str,
        font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
        radius: int,
    ) -> Box:
        t = self.theme
        w = self.text_w(label, font) + 2 * self.px(12)
        if style == "primary":
            fill, outline, fg = t.accent, _mix(t.accent, (0, 0, 0), 0.15), t.accent_text
        elif style == "outline":
            fill, outline, fg = t.window, t.accent, t.accent if not t.dark else t.link
        elif style == "danger":
            fill, outline, fg = (200, 45, 45), (170, 35, 35), (255, 255, 255)
        else:
            fill, outline, fg = t.button_bg, t.input_border, t.text
        self.d.rounded_rectangle([x, y, x + w - 1, y + h - 1], radius=radius, fill=fill, outline=outline)
        self.text(x + w / 2, y + h / 2, label, font, fg, anchor="mm")
        return (x, y, x + w, y + h)

    def content(self, area: Box, n: int) -> None:
        rng, t = self.rng, self.theme
        pad = self.px(rng.choice((10, 12, 14, 16)))
        ax0, ay0, ax1, ay1 = area[0] + pad, area[1] + pad, area[2] - pad, area[3] - pad
        if ax1 - ax0 < self.px(80) or ay1 - ay0 < self.px(24):
            return
        font = self.font(0)
        ch = self.base + self.px(rng.choice((9, 10, 12)))
        gap = self.px(rng.choice((6, 8, 10)))
        radius = rng.choice((2, 3, 4, 6, ch // 2))
        budget = n
        if budget > 0 and rng.random() < 0.55:
            hfont = self.font(rng.choice((3, 4, 6)))
            text = self.pick(HEADINGS, lambda s: self.text_w(s, hfont) <= ax1 - ax0)
            if text:
                asc, desc = hfont.getmetrics()
                if ay0 + asc + desc <= ay1:
                    box = self.text(ax0, ay0, text, hfont, t.text, anchor="la")
                    self.add("text", text, box)
                    budget -= 1
                    ay0 += asc + desc + gap + self.px(4)
        if budget >= 1 and rng.random() < 0.55 and ay1 - ch >= ay0:  # dialog buttons along the bottom
            group = [b for b in rng.choice(BUTTON_GROUPS)][-budget:]
            if not any(self.taken(b) for b in group):
                widths = [self.text_w(b, font) + 2 * self.px(12) for b in group]
                total = sum(widths) + self.px(8) * (len(group) - 1)
                if total <= ax1 - ax0:
                    x = ax1 - total if rng.random() < 0.75 else ax0
                    y = ay1 - ch
                    for k, (label, bw) in enumerate(zip(group, widths, strict=True)):
                        style = "primary" if k == len(group) - 1 else "secondary"
                        if label in ("Delete", "Discard") and style == "primary":
                            style = "danger"
                        box = self.button(x, y, label, ch, style, font, radius)
                        self.add("button", label, box)
                        x += bw + self.px(8)
                    budget -= len(group)
                    ay1 = y - gap - self.px(4)
                    if rng.random() < 0.5:
                        self.d.line(
                            [(area[0] + 1, ay1 + gap // 2), (area[2] - 2, ay1 + gap // 2)], fill=t.border
                        )
                        ay1 -= gap
        width = ax1 - ax0
        ncols = 2 if width >= self.px(320) and rng.random() < 0.45 else 1
        cgap = self.px(20)
        cw = (width - cgap * (ncols - 1)) // ncols
        cols = [[ax0 + k * (cw + cgap), ay0] for k in range(ncols)]
        label_w = self.px(rng.choice((64, 72, 84)))
        stacked = rng.random() < 0.35
        kinds = (
            "field",
            "checkbox",
            "switch",
            "radio",
            "dropdown",
            "button",
            "link",
            "text",
            "slider",
            "icons",
        )
        weights = (5, 4, 2, 2, 3, 3, 2, 2, 1, 2)
        col = 0
        failures = 0
        while budget > 0 and col < ncols and failures < 12:
            kind = rng.choices(kinds, weights)[0]
            x, y = cols[col]
            need = self.widget_height(kind, ch, stacked, font)
            if y + need > ay1:
                if need <= ch:
                    col += 1
                failures += 1
                continue
            used = self.widget(kind, x, y, cw, ch, budget, font, label_w, stacked, radius)
            if used is None:
                failures += 1
                continue
            h, count = used
            budget -= count
            cols[col][1] = y + h + gap
            if ncols > 1 and rng.random() < 0.5:
                col = (col + 1) % ncols if cols[(col + 1) % ncols][1] <= cols[col][1] else col
        for x, y in cols:
            if ay1 - y >= self.px(56) and cw >= self.px(100) and rng.random() < 0.6:
                self.decorate(x, y, x + cw, ay1)

    def decorate(self, x0: int, y0: int, x1: int, y1: int) -> None:
        """Fill empty content space with something that is never a target: a chart, a page, thumbnails."""
        rng, t, d = self.rng, self.theme, self.d
        kind = rng.choice(("chart", "page", "thumbs", "rows"))
        if kind == "chart":
            d.rounded_rectangle(
                [x0, y0, x1 - 1, y1 - 1], radius=self.px(6), fill=t.input_bg, outline=t.border
            )
            pad = self.px(10)
            bx0, by0, bx1, by1 = x0 + pad, y0 + pad, x1 - pad, y1 - pad
            for k in range(1, 4):
                gy = by0 + (by1 - by0) * k // 4
                d.line([(bx0, gy), (bx1, gy)], fill=_mix(t.input_bg, t.border, 0.6))
            n = rng.randint(5, 12)
            bw = (bx1 - bx0) / n
            colors = (t.accent, _mix(t.accent, t.input_bg, 0.5))
            line = rng.random() < 0.4
            pts = []
            for k in range(n):
                top = by1 - (by1 - by0) * rng.uniform(0.15, 0.95)
                if line:
                    pts.append((bx0 + bw * (k + 0.5), top))
                else:
                    d.rectangle(
                        [bx0 + bw * k + bw * 0.2, top, bx0 + bw * (k + 1) - bw * 0.2, by1], fill=colors[k % 2]
                    )
            if pts:
                d.line(pts, fill=t.accent, width=self.px(2), joint="curve")
            d.line([(bx0, by1), (bx1, by1)], fill=t.muted)
        elif kind == "page":
            page = (255, 255, 255) if not t.dark else _mix(t.window, (255, 255, 255), 0.04)
            d.rectangle([x0, y0, x1 - 1, y1 - 1], fill=page, outline=t.border)
            font = self.font(-2)
            asc, desc = font.getmetrics()
            y = y0 + self.px(8)
            fg = (70, 70, 70) if not t.dark else (190, 190, 190)
            while y + asc + desc <= y1 - self.px(6):
                line = ""
                while True:
                    cand = (line + " " + rng.choice(_LOREM)).strip()
                    if self.text_w(cand, font) > x1 - x0 - self.px(16):
                        break
                    line = cand
                if rng.random() < 0.15:  # paragraph end: a short line
                    line = " ".join(line.split()[: max(1, len(line.split()) // 2)])
                self.text(x0 + self.px(8), y, line, font, fg, anchor="la")
                y += asc + desc + self.px(3)
        elif kind == "thumbs":
            s = self.px(rng.choice((48, 56, 64)))
            gap = self.px(8)
            y = y0
            while y + s <= y1:
                x = x0
                while x + s <= x1:
                    sky = rng.choice(_WALLPAPERS)[rng.randrange(2)]
                    d.rounded_rectangle([x, y, x + s - 1, y + s - 1], radius=self.px(4), fill=sky)
                    ground = _mix(sky, (20, 60, 30), 0.6)
                    d.polygon(
                        [
                            (x, y + s * 0.8),
                            (x + s * 0.35, y + s * 0.45),
                            (x + s * 0.6, y + s * 0.7),
                            (x + s * 0.8, y + s * 0.55),
                            (x + s - 1, y + s * 0.75),
                            (x + s - 1, y + s - 1),
                            (x, y + s - 1),
                        ],
                        fill=ground,
                    )
                    x += s + gap
                y += s + gap
        else:
            rh = self.px(rng.choice((22, 26)))
            y = y0
            k = 0
            while y + rh <= y1:
                if k % 2 == 1:
                    d.rectangle([x0, y, x1 - 1, y + rh - 1], fill=_mix(t.window, t.border, 0.25))
                bar = _mix(t.window, t.muted, 0.45)
                bx = x0 + self.px(8)
                for frac in (0.3, 0.2, 0.15):
                    bw = round((x1 - x0) * frac * rng.uniform(0.5, 1.0))
                    d.rounded_rectangle(
                        [bx, y + rh // 2 - self.px(3), bx + bw, y + rh // 2 + self.px(3)],
                        radius=self.px(3),
                        fill=bar,
                    )
                    bx += round((x1 - x0) * (frac + 0.08))
                y += rh
                k += 1

    def widget_height(
        self, kind: str, ch: int, stacked: bool, font: ImageFont.FreeTypeFont | ImageFont.ImageFont
    ) -> int:
        asc, desc = font.getmetrics()
        if kind in ("field", "dropdown") and stacked:
            return asc + desc + self.px(3) + ch
        if kind in ("link", "text"):
            return asc + desc
        return ch

    def widget(
        self,
        kind: str,
        x: int,
        y: int,
        cw: int,
        ch: int,
        budget: int,
        font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
        label_w: int,
        stacked: bool,
        radius: int,
    ) -> tuple[int, int] | None:
        """Draw one widget (or a small group) at (x, y) in a column of width `cw`: (height, elements) or None."""
        rng, t, d = self.rng, self.theme, self.d
        asc, desc = font.getmetrics()
        small = self.font(-1)
        if kind in ("field", "dropdown"):
            table = FIELDS if kind == "field" else DROPDOWNS
            entries = [e for e in table if not self.taken(e[0])]
            if not entries:
                return None
            entry = rng.choice(entries)
            label = entry[0]
            with_label = budget >= 2
            lw = label_w if with_label and not stacked else 0
            if with_label and not stacked and self.text_w(label + ":", small) > lw - self.px(6):
                lw = self.text_w(label + ":", small) + self.px(8)
            fw = min(cw - lw, self.px(rng.choice((140, 170, 200, 240))))
            if fw < self.px(80):
                return None
            if kind == "field":
                typed = rng.random() < 0.5
                value = self.pick(_words(entry[2]) if typed else (entry[1],))
            else:
                typed, value = True, self.pick(_words(entry[1]))
            if (
                value is None
                or _key(value) == _key(label)
                or self.text_w(value, font) > fw - self.px(10) - (self.px(14) if kind == "dropdown" else 0)
            ):
                return None
            fy = y
            if with_label:
                shown = label if stacked else label + ":"
                if stacked:
                    box = self.text(x, y, shown, small, t.text, anchor="la")
                    fy = y + asc + desc + self.px(3)
                else:
                    box = self.text(x, y + ch / 2, shown, small, t.text)
                self.add("text", shown, box)
            fx = x + lw
            r = min(radius, ch // 2)
            if kind == "field":
                d.rounded_rectangle(
                    [fx, fy, fx + fw - 1, fy + ch - 1],
                    radius=min(r, 6),
                    fill=t.input_bg,
                    outline=t.input_border,
                )
                self.text(fx + self.px(6), fy + ch / 2, value, font, t.text if typed else t.muted)
                self.add(
                    "input",
                    value,
                    (fx, fy, fx + fw, fy + ch),
                    name=label,
                    state="" if typed else "placeholder",
                )
            else:
                d.rounded_rectangle(
                    [fx, fy, fx + fw - 1, fy + ch - 1],
                    radius=min(r, 6),
                    fill=t.button_bg if rng.random() < 0.5 else t.input_bg,
                    outline=t.input_border,
                )
                self.text(fx + self.px(6), fy + ch / 2, value, font, t.text)
                cx, cy, a = fx + fw - self.px(10), fy + ch / 2, self.px(4)
                d.line(
                    [(cx - a, cy - a / 2), (cx, cy + a / 2), (cx + a, cy - a / 2)],
                    fill=t.muted,
                    width=max(1, self.px(1.5)),
                )
                self.add("dropdown", value, (fx, fy, fx + fw, fy + ch), name=label)
            return (fy - y) + ch, 1 + with_label
        if kind in ("checkbox", "switch"):
            label = self.pick(CHECKBOXES if kind == "checkbox" else SWITCHES)
            on = rng.random() < 0.5
            if label is None:
                return None
            if kind == "checkbox":
                s = self.px(rng.choice((12, 13, 14)))
                sx, sy = x, y + (ch - s) // 2
                if on:
                    d.rounded_rectangle([sx, sy, sx + s - 1, sy + s - 1], radius=self.px(2), fill=t.accent)
                    d.line(
                        [
                            (sx + s * 0.22, sy + s * 0.52),
                            (sx + s * 0.42, sy + s * 0.72),
                            (sx + s * 0.78, sy + s * 0.28),
                        ],
                        fill=(255, 255, 255),
                        width=max(2, self.px(2)),
                    )
                else:
                    d.rounded_rectangle(
                        [sx, sy, sx + s - 1, sy + s - 1],
                        radius=self.px(2),
                        fill=t.input_bg,
                        outline=t.input_border,
                    )
                gw, gh = s, s
            else:
                gw, gh = self.px(28), self.px(16)
                sx, sy = x, y + (ch - gh) // 2
                d.rounded_rectangle(
                    [sx, sy, sx + gw - 1, sy + gh - 1],
                    radius=gh // 2,
                    fill=t.accent if on else t.input_border,
                )
                k = gh - self.px(4)
                kx = sx + gw - k - self.px(2) if on else sx + self.px(2)
                d.ellipse([kx, sy + self.px(2), kx + k - 1, sy + self.px(2) + k - 1], fill=(255, 255, 255))
            tx = x + gw + self.px(7)
            if tx + self.text_w(label, font) > x + cw:
                return None
            box = self.text(tx, y + ch / 2, label, font, t.text)
            state = ("checked" if on else "unchecked") if kind == "checkbox" else ("on" if on else "off")
            self.add(kind, label, (sx, min(sy, box[1]), box[2], max(sy + gh, box[3])), state=state)
            return ch, 1
        if kind == "radio":
            groups = [g for g in RADIOS if not any(self.taken(o) for o in _words(g[1]))]
            if not groups:
                return None
            glabel, opts = rng.choice(groups)
            options = list(_words(opts))
            with_label = budget >= 3 and not self.taken(glabel)
            options = options[: budget - with_label]
            selected = rng.randrange(len(options))
            x_cur = x
            s = self.px(13)
            placed = []
            if with_label:
                lw = self.text_w(glabel + ":", small) + self.px(10)
                placed.append(("label", x_cur, lw))
                x_cur += lw
            for k, o in enumerate(options):
                ow = s + self.px(6) + self.text_w(o, font)
                if x_cur + ow > x + cw:
                    break
                placed.append((k, x_cur, ow))
                x_cur += ow + self.px(14)
            if not any(p[0] != "label" for p in placed):
                return None
            count = 0
            for k, px_, _ in placed:
                if k == "label":
                    box = self.text(px_, y + ch / 2, glabel + ":", small, t.text)
                    self.add("text", glabel + ":", box)
                else:
                    sy = y + (ch - s) // 2
                    on = k == selected
                    d.ellipse(
                        [px_, sy, px_ + s - 1, sy + s - 1],
                        fill=t.input_bg,
                        outline=t.accent if on else t.input_border,
                        width=max(1, self.px(1)),
                    )
                    if on:
                        q = self.px(3)
                        d.ellipse([px_ + q, sy + q, px_ + s - 1 - q, sy + s - 1 - q], fill=t.accent)
                    box = self.text(px_ + s + self.px(6), y + ch / 2, options[k], font, t.text)
                    self.add(
                        "radio",
                        options[k],
                        (px_, min(sy, box[1]), box[2], max(sy + s, box[3])),
                        state="selected" if on else "",
                    )
                count += 1
            return ch, count
        if kind == "button":
            k = min(budget, rng.choice((1, 1, 2, 3)))
            style = rng.choice(("primary", "secondary", "outline"))
            x_cur, count = x, 0
            for _ in range(k):
                label = self.pick(
                    BUTTONS, lambda b, x_cur=x_cur: x_cur + self.text_w(b, font) + 2 * self.px(12) <= x + cw
                )
                if label is None:
                    break
                box = self.button(x_cur, y, label, ch, style, font, radius)
                self.add("button", label, box)
                x_cur = box[2] + self.px(8)
                count += 1
                style = "secondary" if style == "primary" else style
            return (ch, count) if count else None
        if kind in ("link", "text"):
            f = font if kind == "link" or rng.random() < 0.5 else small
            label = self.pick(LINKS if kind == "link" else TEXTS, lambda s: self.text_w(s, f) <= cw)
            if label is None:
                return None
            box = self.text(
                x,
                y,
                label,
                f,
                t.link if kind == "link" else (t.muted if rng.random() < 0.5 else t.text),
                anchor="la",
            )
            if kind == "link" and rng.random() < 0.6:
                ub = y + f.getmetrics()[0] + 1
                d.line([(box[0], ub), (box[2] - 1, ub)], fill=t.link)
                box = (box[0], box[1], box[2], max(box[3], ub + 1))
            self.add(kind, label, box)
            return asc + desc, 1
        if kind == "slider":
            label = self.pick(SLIDERS)
            if label is None:
                return None
            lw = self.text_w(label, small) + self.px(10)
            tw = min(cw - lw - self.px(40), self.px(rng.choice((120, 150, 180))))
            if tw < self.px(60):
                return None
            lbox = self.text(x, y + ch / 2, label, small, t.text)
            tx0, cy = x + lw, y + ch // 2
            frac = rng.random()
            th = self.px(4)
            d.rounded_rectangle(
                [tx0, cy - th // 2, tx0 + tw - 1, cy - th // 2 + th - 1], radius=th // 2, fill=t.input_border
            )
            kx = tx0 + round(frac * (tw - 1))
            d.rounded_rectangle([tx0, cy - th // 2, kx, cy - th // 2 + th - 1], radius=th // 2, fill=t.accent)
            k = self.px(7)
            d.ellipse(
                [kx - k, cy - k, kx + k, cy + k],
                fill=t.accent if rng.random() < 0.5 else (255, 255, 255),
                outline=t.accent,
            )
            vbox = self.text(tx0 + tw + k + self.px(6), y + ch / 2, f"{round(frac * 100)}%", small, t.muted)
            self.add("slider", label, (x, min(lbox[1], cy - k), vbox[2], max(lbox[3], cy + k + 1, vbox[3])))
            return ch, 1
        if kind == "icons":
            k = min(budget, rng.randint(2, 4))
            s = self.px(rng.choice((16, 18, 20)))
            framed = rng.random() < 0.5
            cell = ch if framed else s
            x_cur, count = x, 0
            for _ in range(k):
                if x_cur + cell > x + cw:
                    break
                name = self.pick_icon()
                if name is None:
                    break
                cy0 = y + (ch - cell) // 2
                if framed:
                    d.rounded_rectangle(
                        [x_cur, cy0, x_cur + cell - 1, cy0 + cell - 1],
                        radius=min(radius, cell // 2),
                        fill=t.button_bg,
                        outline=t.input_border,
                    )
                _draw_icon(
                    d,
                    name,
                    x_cur + (cell - s) // 2,
                    cy0 + (cell - s) // 2,
                    s,
                    t.text,
                    t.button_bg if framed else t.window,
                )
                self.add("icon", "", (x_cur, cy0, x_cur + cell, cy0 + cell), name=name)
                x_cur += cell + self.px(10)
                count += 1
            return (ch, count) if count else None
        raise ValueError(kind)  # pragma: no cover


def render_screen(seed: int, width: int, height: int, n_elements: int) -> tuple[Image.Image, list[Element]]:
    """Render one GUI screenshot: the image and every targetable element on it.

    The window chrome (title-bar buttons, menus, toolbar icons, tabs, sidebar, status text) brings its own
    elements; `n_elements` counts the widgets of the content area, fewer when they do not fit.
    """
    rng = random.Random(seed)
    s = _Screen(rng, width, height)
    win = s.desktop()
    y = s.title_bar(win)
    if rng.random() < 0.5:
        y = s.menu_bar(win, y)
    if rng.random() < 0.55:
        y = s.toolbar(win, y)
    bottom = win[3] - 1
    if rng.random() < 0.35:
        bottom = s.status_bar(win, win[3])
    x0 = win[0]
    if win[2] - win[0] >= s.px(340) and rng.random() < 0.35:
        x0 = s.sidebar(y, win[0], bottom)
    if rng.random() < 0.35:
        y = s.tabs(x0, y, win[2])
    s.content((x0, y, win[2], bottom), n_elements)
    return s.img, s.elements


# --- samples ------------------------------------------------------------------------------------------------


def _derive_seed(*parts: object) -> int:
    # A hash rather than `seed * K + index`: streams for nearby seeds/indices share nothing.
    digest = hashlib.sha256(":".join(map(str, ("imagelora-synth", *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _q(text: str) -> str:
    return f"'{text}'"


def grounding_instruction(rng: random.Random, el: Element) -> str:
    """A natural click instruction that names `el` unambiguously (its text, or its icon name)."""
    t, q = el.text, _q(el.text)
    where = {
        "toolbar": " in the toolbar",
        "title bar": " in the title bar",
        "sidebar": " in the sidebar",
        "menu bar": " in the menu bar",
        "status bar": " in the status bar",
        "taskbar": " in the taskbar",
    }.get(el.region, "")
    where = where if rng.random() < 0.4 else ""
    bare = t if " " not in t and rng.random() < 0.5 else q
    options: tuple[str, ...]
    if el.type == "button":
        options = (
            f"Click the {bare} button.",
            f"Press {q}.",
            f"Click {q}.",
            f"Tap the {bare} button.",
            f"Hit the {q} button.",
        )
    elif el.type == "icon":
        n = el.name
        options = (
            f"Click the {n} icon{where}.",
            f"Tap the {n} icon.",
            f"Press the {n} icon{where}.",
            f"Open the {n} icon.",
        )
        if el.region == "title bar":
            verb = {"close": "Close", "minimize": "Minimize", "maximize": "Maximize"}[n]
            options += (f"{verb} the window using the {n} button.", f"Click the {n} button in the title bar.")
    elif el.type == "input":
        if el.state == "placeholder":
            options = (
                f"Click the {q} field.",
                f"Click in the text box that says {q}.",
                f"Select the input showing {q}.",
            )
        else:
            options = (
                f"Click the text field containing {q}.",
                f"Edit the field that reads {q}.",
                f"Click in the {q} box.",
            )
    elif el.type == "checkbox":
        verb = "Uncheck" if el.state == "checked" else "Check"
        options = (
            f"{verb} the {q} box.",
            f"{verb} {q}.",
            f"Click the checkbox labelled {q}.",
            f"Toggle the {q} checkbox.",
        )
    elif el.type == "switch":
        verb = "Turn off" if el.state == "on" else "Turn on"
        options = (f"{verb} {q}.", f"Toggle the {q} switch.", f"Click the switch next to {q}.")
    elif el.type == "radio":
        options = (f"Select the {q} option.", f"Choose {q}.", f"Click the {q} radio button.")
    elif el.type == "dropdown":
        options = (
            f"Open the dropdown showing {q}.",
            f"Click the {q} drop-down menu.",
            f"Expand the {q} dropdown.",
        )
    elif el.type == "link":
        options = (f"Click the {q} link.", f"Follow the link {q}.", f"Open {q}.")
    elif el.type == "slider":
        options = (f"Drag the {q} slider.", f"Adjust the {t} slider.", f"Click the {q} slider.")
    elif el.type == "tab":
        options = (f"Switch to the {bare} tab.", f"Open the {q} tab.", f"Click the {q} tab.")
    elif el.type == "menu":
        options = (f"Open the {t} menu.", f"Click {q} in the menu bar.", f"Click the {t} menu.")
    elif el.type == "item":
        options = (f"Go to {q} in the sidebar.", f"Click {q}{where}.", f"Select {q} from the sidebar.")
    else:
        options = (f"Click on the text {q}{where}.", f"Point to {q}.", f"Click the label {q}{where}.")
    return rng.choice(options)


def render(
    style: str, seed: int, width: int, height: int, n_elements: int
) -> tuple[Image.Image, list[Element]]:
    """One screen of `style` (see STYLES) and its targetable elements."""
    if style == "shapes":
        from imagelora_dist.data.shapes import render_shapes_screen  # shapes.py imports this module

        return render_shapes_screen(seed, width, height, n_elements)
    return render_screen(seed, width, height, n_elements)


def _grounding(style: str) -> Callable[[random.Random, Element], str]:
    if style == "shapes":
        from imagelora_dist.data.shapes import grounding_instruction as shapes_grounding

        return shapes_grounding
    return grounding_instruction


def encode_png(img: Image.Image) -> bytes:
    """PNG bytes with fixed settings, so the same pixels always give the same bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def make_sample(spec: SynthSpec, index: int) -> dict[str, Any]:
    """Sample `index` of the dataset `spec` describes: `{"__key__", "png", "json"}` (record per shards.py)."""
    rng = random.Random(_derive_seed(spec.seed, index, "sample"))
    n = rng.randint(spec.min_elements, spec.max_elements)
    w, h = spec.width, spec.height
    img, elements = render(spec.style, rng.getrandbits(63), w, h, n)
    task = rng.choice(spec.tasks)
    # Referring needs visible text to answer with; icons are grounding-only targets.
    pool = elements if task == GROUNDING else [e for e in elements if e.text]
    # Chrome repeats on every screen: weight the content widgets so they are most of the targets.
    el = rng.choices(pool, [3 if e.region == "content" else 1 for e in pool])[0]
    if spec.phrasing == "pretrain":
        from imagelora_dist.data.pretrain_tasks import describe_at_question, point_question

        base = (
            point_question(rng, el, spec.style) if task == GROUNDING else describe_at_question(rng, el, w, h)
        )
    elif task == GROUNDING:
        base = _grounding(spec.style)(rng, el)
    else:
        base = referring_instruction(el.box, w, h, spec.style)
    answer = grounding_answer(el.box, w, h) if task == GROUNDING else referring_answer(el.type, el.text)
    # A separate stream: the context length changes the instruction text only, never the screen or target.
    crng = random.Random(_derive_seed(spec.seed, index, "context"))
    lo, hi = spec.instruction_words
    preamble = context_preamble(crng, crng.randint(lo, hi)) if hi > 0 else ""
    cx, cy = box_center(el.box)
    record = {
        "id": f"{spec.prefix}-{spec.seed}-{index:09d}",
        "task": task,
        "instruction": f"{preamble} {base}" if preamble else base,
        "answer": answer,
        "bbox": list(el.box),
        "point": [cx, cy],
        "element_type": el.type,
        "element_text": el.text,
        "width": w,
        "height": h,
        "source": "synth",
    }
    return {"__key__": f"{index:09d}", "png": encode_png(img), "json": record}


# --- shards -------------------------------------------------------------------------------------------------


def synthesize(
    spec: SynthSpec,
    out_dir: str | os.PathLike,
    workers: int | None = None,
    progress: Callable[[str], None] | None = print,
    *,
    overwrite: bool = False,
) -> ShardIndex:
    """Render `spec` into WebDataset shards plus `index.json` in `out_dir`; same bytes for any `workers`."""
    return render_shards(spec, make_sample, out_dir, workers=workers, progress=progress, overwrite=overwrite,
                         tag="synth", created_by="imagelora-dist synth")  # fmt: skip
