"""Instruction text of the GUI screens: click instructions, the pre-training phrasing, the context preamble.

`grounding_instruction` names an element the way a user would ("Click the 'Save' button.");
`point_question` / `describe_at_question` ask the same in the pre-training tasks' words
(`phrasing: pretrain`); `context_preamble` pads an instruction with plausible context to an exact
word count (`instruction_words`).
"""

from __future__ import annotations

import random

from imagelora_dist.data.synth.elements import Element
from imagelora_dist.data.synth.vocabulary import APPS, words
from imagelora_dist.data.tasks import box_center, normalize_point


def quoted(text: str) -> str:
    """`text` in single quotes, as instructions name a label."""
    return f"'{text}'"


# --- click instructions (phrasing `downstream`) -------------------------------------------------------------

# Fields: {t} the text, {q} it quoted, {bare} unquoted when one word (half the time), {where} " in the
# toolbar" etc. (40% of the time), {n} the icon name, {verb} how to flip a checkbox or switch.
_CLICK = {
    "button": ("Click the {bare} button.", "Press {q}.", "Click {q}.", "Tap the {bare} button.",
               "Hit the {q} button."),
    "icon": ("Click the {n} icon{where}.", "Tap the {n} icon.", "Press the {n} icon{where}.",
             "Open the {n} icon."),
    "placeholder": ("Click the {q} field.", "Click in the text box that says {q}.",
                    "Select the input showing {q}."),
    "input": ("Click the text field containing {q}.", "Edit the field that reads {q}.",
              "Click in the {q} box."),
    "checkbox": ("{verb} the {q} box.", "{verb} {q}.", "Click the checkbox labelled {q}.",
                 "Toggle the {q} checkbox."),
    "switch": ("{verb} {q}.", "Toggle the {q} switch.", "Click the switch next to {q}."),
    "radio": ("Select the {q} option.", "Choose {q}.", "Click the {q} radio button."),
    "dropdown": ("Open the dropdown showing {q}.", "Click the {q} drop-down menu.",
                 "Expand the {q} dropdown."),
    "link": ("Click the {q} link.", "Follow the link {q}.", "Open {q}."),
    "slider": ("Drag the {q} slider.", "Adjust the {t} slider.", "Click the {q} slider."),
    "tab": ("Switch to the {bare} tab.", "Open the {q} tab.", "Click the {q} tab."),
    "menu": ("Open the {t} menu.", "Click {q} in the menu bar.", "Click the {t} menu."),
    "item": ("Go to {q} in the sidebar.", "Click {q}{where}.", "Select {q} from the sidebar."),
    "text": ("Click on the text {q}{where}.", "Point to {q}.", "Click the label {q}{where}."),
}  # fmt: skip
# The window controls also read as actions on the window ("Close the window using the close button.").
_TITLE_BAR_CLICK = ("{n_verb} the window using the {n} button.", "Click the {n} button in the title bar.")
_WHERE = {
    "toolbar": " in the toolbar", "title bar": " in the title bar", "sidebar": " in the sidebar",
    "menu bar": " in the menu bar", "status bar": " in the status bar", "taskbar": " in the taskbar",
}  # fmt: skip


def _flip(el: Element) -> str:
    """How to change a checkbox or switch from its current state."""
    if el.type == "checkbox":
        return "Uncheck" if el.state == "checked" else "Check"
    return "Turn off" if el.state == "on" else "Turn on"


def grounding_instruction(rng: random.Random, el: Element) -> str:
    """A natural click instruction that names `el` unambiguously (its text, or its icon name)."""
    t, q = el.text, quoted(el.text)
    where = _WHERE.get(el.region, "") if rng.random() < 0.4 else ""
    bare = t if " " not in t and rng.random() < 0.5 else q
    kind = "placeholder" if el.type == "input" and el.state == "placeholder" else el.type
    templates = _CLICK.get(kind, _CLICK["text"])
    if el.type == "icon" and el.region == "title bar":
        templates += _TITLE_BAR_CLICK
    fields = {"t": t, "q": q, "bare": bare, "where": where, "n": el.name, "n_verb": el.name.capitalize()}
    return rng.choice(templates).format(verb=_flip(el), **fields)


# --- the same questions in the pre-training tasks' words (phrasing `pretrain`) ------------------------------

_POINT = ("Give the coordinates of {t}.", "Where exactly is {t}? Answer with a point.")
_DESCRIBE_AT = ("Describe the element at ({x}, {y}).", "What is at ({x}, {y})? Give its kind and name.")


def point_question_naming(rng: random.Random, target: str) -> str:
    """The `point` task's instruction for a target already put in words ("'Save'", "the red circle")."""
    return rng.choice(_POINT).format(t=target)


def point_question(rng: random.Random, el: Element) -> str:
    """`point`'s instruction for `el` on a GUI screen: the grounding question in the pre-training's words."""
    return point_question_naming(rng, f"the {el.name} icon" if el.type == "icon" else quoted(el.text))


def describe_at_question(rng: random.Random, el: Element, width: int, height: int) -> str:
    """`describe_at`'s instruction for `el`: the referring question in the pre-training's words."""
    x, y = normalize_point(*box_center(el.box), width, height)
    return rng.choice(_DESCRIBE_AT).format(x=x, y=y)


# --- the instruction preamble (context words) ---------------------------------------------------------------

_ACTIVITIES = words(
    "editing a document|reviewing a spreadsheet|sorting their email|changing system settings|"
    "filling in a sign-up form|organising project files|booking a business trip|preparing a presentation|"
    "updating their user profile|configuring a new printer|shopping for office supplies|writing some code|"
    "planning a team meeting|cleaning up old downloads|paying a monthly invoice|setting up a new laptop"
)
_DEVICES = words("laptop|desktop computer|tablet|work station|shared office computer|home computer")
_WHEN = words("before lunch|in the next few minutes|by the end of the day|today|before the meeting starts")
_PREFS = words("default|simple|privacy-friendly|compact|accessible|familiar")
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
