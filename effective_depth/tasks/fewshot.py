"""Few-shot tasks for pretrained language models: the model reads ``shots`` solved examples, one
per line, then the query, and must continue it with the answer.

A pretrained LM was never trained on the zoo's bare ``"12+34="`` format; a few solved examples
tell it the format in context (Brown et al. 2020). Both tasks are built so that the answer starts
on a clean token boundary for the BPE tokenizers of real models (SmolLM2, Gemma 3, Llama, Qwen):

``fewshot_addition``  ``"12 + 34 = 46\\n57 + 21 = 78\\n30 + 45 = "`` -> ``"75"``. Both
                      tokenizers split digits one by one and keep the space before a number as a
                      token of its own, so the prompt ends in that space and the answer is the
                      digits alone (an answer ``" 75"`` would make a trivially predictable space
                      its first token).
``capitals``          ``"The capital of Japan is Tokyo.\\nThe capital of Peru is Lima.\\n``
                      ``The capital of France is"`` -> ``" Paris"``: a word token carries its
                      leading space, so here the space belongs to the answer.

The toolkit checks the boundary anyway (``docs/methods.md``, "Tokens"): a token merged across it
belongs to the answer. Generation is seeded with a private ``random.Random``; the query never
appears among its own shots. ``split`` divides the problems 90/10 (addition: by a hash of the
whole prompt, as the ``addition`` task does) or 70/30 (capitals: by a hash of the country, and
the shots of every prompt are train-split countries), so the tuned lens trains on other prompts
than the analysed ones.
"""

from __future__ import annotations

import random

from ..errors import TaskError
from .arithmetic import _operand_range, in_split
from .base import Example, Param, Task, register_task, stable_bucket

__all__ = ["FewShotAdditionTask", "CapitalsTask", "CAPITALS", "DEFAULT_SHOTS"]

#: the default number of solved examples before the query (chosen by measurement: docs/tasks.md)
DEFAULT_SHOTS = 3

_SPLIT = Param(str, "all", "which problems: all, the train split or the held-out test split",
               choices=("all", "train", "test"))
_SEED = Param(int, 0, "seed of the problem generator", min=0)
_SHOTS = Param(int, DEFAULT_SHOTS, "solved examples before the query", min=0, max=32)
_COUNT_DEFAULT = 200


@register_task
class FewShotAdditionTask(Task):
    """Few-shot addition: ``shots`` lines ``"a + b = c"`` with ``digits``-digit operands, then the
    query ``"a + b = "``; the answer is the sum's digits."""

    name = "fewshot_addition"
    description = "few-shot 'a + b = c' lines, then the query; operands of `digits` digits"
    params = {
        "digits": Param(int, 1, "digits of each operand (the difficulty)", min=1, max=5),
        "shots": _SHOTS,
        "split": _SPLIT,
        "seed": _SEED,
    }
    difficulty_param = "digits"
    generated = True

    def _pair(self, rng: random.Random) -> tuple[int, int]:
        lo, hi = _operand_range(self.digits)
        return rng.randint(lo, hi), rng.randint(lo, hi)

    def build(self, n: int | None) -> list[Example]:
        want = _COUNT_DEFAULT if n is None else n
        rng = random.Random(f"{self.name}:{self.seed}:{self.digits}:{self.shots}")
        lo, hi = _operand_range(self.digits)
        if self.shots > 0 and (hi - lo + 1) ** 2 < 2:
            raise TaskError("fewshot_addition: too few problems for shots")
        seen: set[str] = set()
        out: list[Example] = []
        tries = 0
        while len(out) < want and tries < 200 * want + 1000:
            tries += 1
            a, b = self._pair(rng)
            lines = []
            while len(lines) < self.shots:
                x, y = self._pair(rng)
                if (x, y) != (a, b):
                    lines.append(f"{x} + {y} = {x + y}\n")
            context = "".join(lines)
            prompt = context + f"{a} + {b} = "
            if prompt in seen or not in_split(prompt, self.split):
                continue
            seen.add(prompt)
            out.append(Example(prompt, str(a + b), {
                "difficulty": self.digits, "digits": self.digits, "shots": self.shots,
                "query": f"{a} + {b}", "result": str(a + b), "query_start": len(context)}))
        return out


#: country -> capital, the seat of government in common English usage (countries whose capital
#: is disputed or split between cities are left out), spelled as English text spells them
CAPITALS: dict[str, str] = {
    "Afghanistan": "Kabul", "Albania": "Tirana", "Algeria": "Algiers", "Andorra": "Andorra la Vella",
    "Angola": "Luanda", "Argentina": "Buenos Aires", "Armenia": "Yerevan", "Australia": "Canberra",
    "Austria": "Vienna", "Azerbaijan": "Baku", "Bahrain": "Manama", "Bangladesh": "Dhaka",
    "Belarus": "Minsk", "Belgium": "Brussels", "Bhutan": "Thimphu",
    "Bosnia and Herzegovina": "Sarajevo", "Botswana": "Gaborone", "Brazil": "Brasília",
    "Bulgaria": "Sofia", "Burkina Faso": "Ouagadougou", "Burundi": "Gitega", "Cambodia": "Phnom Penh",
    "Cameroon": "Yaoundé", "Canada": "Ottawa", "Chad": "N'Djamena", "Chile": "Santiago",
    "China": "Beijing", "Colombia": "Bogotá", "Costa Rica": "San José", "Croatia": "Zagreb",
    "Cuba": "Havana", "Cyprus": "Nicosia", "Czech Republic": "Prague", "Denmark": "Copenhagen",
    "Djibouti": "Djibouti", "Dominican Republic": "Santo Domingo", "Ecuador": "Quito",
    "Egypt": "Cairo", "El Salvador": "San Salvador", "Eritrea": "Asmara", "Estonia": "Tallinn",
    "Ethiopia": "Addis Ababa", "Fiji": "Suva", "Finland": "Helsinki", "France": "Paris",
    "Gabon": "Libreville", "Georgia": "Tbilisi", "Germany": "Berlin", "Ghana": "Accra",
    "Greece": "Athens", "Guatemala": "Guatemala City", "Guinea": "Conakry", "Guyana": "Georgetown",
    "Haiti": "Port-au-Prince", "Honduras": "Tegucigalpa", "Hungary": "Budapest",
    "Iceland": "Reykjavík", "India": "New Delhi", "Indonesia": "Jakarta", "Iran": "Tehran",
    "Iraq": "Baghdad", "Ireland": "Dublin", "Italy": "Rome", "Jamaica": "Kingston",
    "Japan": "Tokyo", "Jordan": "Amman", "Kenya": "Nairobi", "Kuwait": "Kuwait City",
    "Kyrgyzstan": "Bishkek", "Laos": "Vientiane", "Latvia": "Riga", "Lebanon": "Beirut",
    "Liberia": "Monrovia", "Libya": "Tripoli", "Lithuania": "Vilnius", "Luxembourg": "Luxembourg",
    "Madagascar": "Antananarivo", "Malawi": "Lilongwe", "Malaysia": "Kuala Lumpur",
    "Mali": "Bamako", "Malta": "Valletta", "Mauritania": "Nouakchott", "Mexico": "Mexico City",
    "Moldova": "Chișinău", "Monaco": "Monaco", "Mongolia": "Ulaanbaatar", "Montenegro": "Podgorica",
    "Morocco": "Rabat", "Mozambique": "Maputo", "Namibia": "Windhoek", "Nepal": "Kathmandu",
    "New Zealand": "Wellington", "Nicaragua": "Managua", "Niger": "Niamey", "Nigeria": "Abuja",
    "North Korea": "Pyongyang", "North Macedonia": "Skopje", "Norway": "Oslo", "Oman": "Muscat",
    "Pakistan": "Islamabad", "Panama": "Panama City", "Paraguay": "Asunción", "Peru": "Lima",
    "Philippines": "Manila", "Poland": "Warsaw", "Portugal": "Lisbon", "Qatar": "Doha",
    "Romania": "Bucharest", "Russia": "Moscow", "Rwanda": "Kigali", "Saudi Arabia": "Riyadh",
    "Senegal": "Dakar", "Serbia": "Belgrade", "Sierra Leone": "Freetown", "Singapore": "Singapore",
    "Slovakia": "Bratislava", "Slovenia": "Ljubljana", "Somalia": "Mogadishu",
    "South Korea": "Seoul", "South Sudan": "Juba", "Spain": "Madrid", "Sudan": "Khartoum",
    "Suriname": "Paramaribo", "Sweden": "Stockholm", "Switzerland": "Bern", "Syria": "Damascus",
    "Taiwan": "Taipei", "Tajikistan": "Dushanbe", "Thailand": "Bangkok", "Togo": "Lomé",
    "Tunisia": "Tunis", "Turkey": "Ankara", "Turkmenistan": "Ashgabat", "Uganda": "Kampala",
    "Ukraine": "Kyiv", "United Arab Emirates": "Abu Dhabi", "United Kingdom": "London",
    "United States": "Washington, D.C.", "Uruguay": "Montevideo", "Uzbekistan": "Tashkent",
    "Venezuela": "Caracas", "Vietnam": "Hanoi", "Yemen": "Sanaa", "Zambia": "Lusaka",
    "Zimbabwe": "Harare",
}

_CAPITALS_TEST_BUCKETS = 3  # of 10: about 30% of the countries are held out


def capitals_split(country: str) -> str:
    """``"test"`` for the held-out countries (a stable hash of the name), else ``"train"``."""
    return "test" if stable_bucket(f"capital:{country}") < _CAPITALS_TEST_BUCKETS else "train"


@register_task
class CapitalsTask(Task):
    """Few-shot capitals: ``shots`` lines ``"The capital of X is Y."``, then
    ``"The capital of Z is"``; the answer is ``" " + capital`` (a word token with its space)."""

    name = "capitals"
    description = (f"few-shot 'The capital of X is Y.' lines, then the query "
                   f"({len(CAPITALS)} countries built in)")
    params = {
        "shots": _SHOTS,
        "split": Param(str, "all", "which countries: all, train (~70%) or the held-out test "
                       "(~30%); the shots are always train countries", choices=("all", "train", "test")),
        "seed": _SEED,
    }
    generated = True

    def build(self, n: int | None) -> list[Example]:
        countries = sorted(CAPITALS)
        queries = [c for c in countries if self.split == "all" or capitals_split(c) == self.split]
        shot_pool = [c for c in countries if capitals_split(c) == "train"]
        want = len(queries) if n is None else n
        rng = random.Random(f"{self.name}:{self.seed}:{self.shots}")
        seen: set[str] = set()
        out: list[Example] = []
        rounds = 0
        # every query country once per round (a fresh order each round); later rounds ask the
        # same countries with other shots, until `want` distinct prompts exist
        while len(out) < want and rounds < 50:
            rounds += 1
            order = list(queries)
            rng.shuffle(order)
            for country in order:
                if len(out) >= want:
                    break
                pool = [c for c in shot_pool if c != country]
                context = "".join(f"The capital of {c} is {CAPITALS[c]}.\n"
                                  for c in rng.sample(pool, self.shots))
                prompt = context + f"The capital of {country} is"
                if prompt in seen:
                    continue
                seen.add(prompt)
                out.append(Example(prompt, " " + CAPITALS[country], {
                    "difficulty": None, "country": country, "shots": self.shots,
                    "split": capitals_split(country), "result": CAPITALS[country],
                    "query_start": len(context)}))
        return out
