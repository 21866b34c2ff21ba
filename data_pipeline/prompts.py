"""Natural-language prompts for spatial-world scenes: many templates and synonyms, relations in shuffled order.

The paper's prompts are long LLM-written descriptions with many spatial relations. We write them from
templates: an opening sentence that lists the objects and the background, then one sentence per relation
(each relation type has several phrasings, some with the objects in inverted order), with optional linking
words. The structured relations travel beside the text, so the verifier never parses prompts.

The perturbed prompt (the description the rejected image actually satisfies) reuses the same template choices
with each violated relation replaced by its converse.
"""

from __future__ import annotations

import numpy as np

from data_pipeline.relations import CONVERSE
from data_pipeline.world import Relation, Scene

SHAPE_WORDS = {
    "circle": ["circle", "disc", "round shape"],
    "square": ["square", "block", "box"],
    "triangle": ["triangle", "three-sided shape", "wedge"],
    "diamond": ["diamond", "rhombus", "lozenge"],
}
# {a} = subject, {b} = object. Templates with the object first still state "subject <type> object".
RELATION_TEMPLATES = {
    "left_of": [
        "{a} is to the left of {b}.", "{a} sits on the left side of {b}.", "To the left of {b} is {a}.",
        "{a} appears left of {b}.", "{a} is placed further left than {b}.",
    ],
    "right_of": [
        "{a} is to the right of {b}.", "{a} sits on the right side of {b}.", "To the right of {b} is {a}.",
        "{a} appears right of {b}.", "{a} is placed further right than {b}.",
    ],
    "above": [
        "{a} is above {b}.", "{a} sits higher up than {b}.", "Above {b} is {a}.",
        "{a} is positioned over {b}.", "{a} is located higher than {b}.",
    ],
    "below": [
        "{a} is below {b}.", "{a} sits lower down than {b}.", "Below {b} is {a}.",
        "{a} is positioned under {b}.", "{a} is located lower than {b}.",
    ],
    "in_front_of": [
        "{a} is in front of {b}.", "{a} overlaps and covers part of {b}.", "{b} is partly hidden by {a}.",
        "{a} is layered on top of {b}.", "In front of {b} stands {a}.",
    ],
    "behind": [
        "{a} is behind {b}.", "{a} is partly covered by {b}.", "{b} hides part of {a}.",
        "{a} is layered underneath {b}.", "Behind {b} lies {a}.",
    ],
    "bigger_than": [
        "{a} is bigger than {b}.", "{a} is larger than {b}.", "{b} is smaller than {a}.",
        "{a} is drawn at a larger size than {b}.", "Compared with {b}, {a} is bigger.",
    ],
    "smaller_than": [
        "{a} is smaller than {b}.", "{a} is tinier than {b}.", "{b} is bigger than {a}.",
        "{a} is drawn at a smaller size than {b}.", "Compared with {b}, {a} is smaller.",
    ],
}
INTROS = [
    "A flat illustration on a {bg} background showing {objects}.",
    "The picture shows {objects} arranged on a {bg} background.",
    "On a {bg} canvas there are {n} shapes: {objects}.",
    "A simple scene with a {bg} backdrop containing {objects}.",
    "An image of {objects}, all placed on a {bg} background.",
    "Flat coloured shapes on a {bg} background: {objects}.",
]
BG_WORDS = {
    "solid": ["plain {c0}", "uniform {c0}", "solid {c0}"],
    "linear": ["{c0} to {c1} gradient", "softly graded {c0} and {c1}", "{c0} fading into {c1}"],
    "radial": ["radial {c0} and {c1}", "{c0} glow fading to {c1}", "{c0} centred gradient with {c1} edges"],
}
LINKS = ["", "", "", "", "", "Also, ", "In addition, ", "Meanwhile, ", "Note that ", "Importantly, "]
OUTROS = ["", "", "", "Every shape is drawn in a flat colour.", "The layout must follow these relations exactly.",
          "Nothing else is in the image."]
COUNT_INTROS = [
    "{N} flat shapes on a {bg} background.",
    "A picture of {n} coloured shapes on a {bg} background.",
    "On a {bg} canvas there are {n} shapes.",
    "A simple scene with a {bg} backdrop and {n} shapes.",
]
LEFTOVER = ["Also present: {objects}.", "The scene also contains {objects}.", "Somewhere there is also {objects}."]
LIST_ALL_MAX = 4  # list every object in the opening sentence only for small scenes; keeps long prompts readable
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def _capitalise(s: str) -> str:
    return s[:1].upper() + s[1:]


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class PromptWriter:
    """Draws the template choices once per scene, so the prompt and its perturbed twin differ only where meant."""

    def __init__(self, rng: np.random.Generator, scene: Scene, relations: list[Relation]):
        self.scene = scene
        self.relations = relations
        self.shape_word = [str(rng.choice(SHAPE_WORDS[o.shape])) for o in scene.objects]
        self.intro = int(rng.integers(len(INTROS)))
        self.count_intro = int(rng.integers(len(COUNT_INTROS)))
        self.leftover = int(rng.integers(len(LEFTOVER)))
        self.bg = int(rng.integers(3))
        self.templates = [int(rng.integers(5)) for _ in relations]
        self.links = [str(rng.choice(LINKS)) for _ in relations]
        self.outro = str(rng.choice(OUTROS))
        self.list_order = rng.permutation(len(scene.objects)).tolist()

    def name(self, i: int) -> str:
        return f"the {self.scene.objects[i].colour} {self.shape_word[i]}"

    def write(self, flipped: set[int] = frozenset()) -> str:
        return self.write_with_clauses(flipped)[0]

    def write_with_clauses(self, flipped: set[int] = frozenset()) -> tuple[str, list[int]]:
        """The prompt, and for each relation the character offset where its sentence ends (one past its last
        character), in the order of `self.relations`."""
        scene = self.scene
        bgw = BG_WORDS[scene.background.kind][self.bg].format(c0=scene.background.colours[0], c1=scene.background.colours[1])
        n = len(scene.objects)
        n_word = NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)
        a_name = [self.name(i).replace("the ", "a ", 1) for i in range(n)]
        if n <= LIST_ALL_MAX:
            parts = [INTROS[self.intro].format(bg=bgw, objects=_join([a_name[i] for i in self.list_order]), n=n_word)]
        else:
            parts = [COUNT_INTROS[self.count_intro].format(bg=bgw, n=n_word, N=_capitalise(n_word))]
        ends = []
        for idx, rel in enumerate(self.relations):
            rtype = CONVERSE[rel.type] if idx in flipped else rel.type
            sentence = RELATION_TEMPLATES[rtype][self.templates[idx]].format(a=self.name(rel.subject), b=self.name(rel.object))
            link = self.links[idx]
            parts.append(link + sentence[:1].lower() + sentence[1:] if link else _capitalise(sentence))
            ends.append(sum(len(q) for q in parts) + len(parts) - 1)  # " ".join: one space between parts
        if n > LIST_ALL_MAX:  # every object is named somewhere
            named = {i for r in self.relations for i in (r.subject, r.object)}
            rest = [a_name[i] for i in self.list_order if i not in named]
            if rest:
                parts.append(LEFTOVER[self.leftover].format(objects=_join(rest)))
        if self.outro:
            parts.append(self.outro)
        return " ".join(parts), ends
