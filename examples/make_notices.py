"""Writes the shipped demo data: formal public notices and their plain-English rewrites, plus a one-word
"which service?" label, for a small council-notices assistant. Deterministic (seeded); run from the repo root:

    python examples/make_notices.py

Each service has four actions; one action per service and three of the time phrases are held out for the eval
sets only, so no eval notice appears in training (the leakage check confirms it).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SERVICES = {
    "roads": (
        ("The highways department", "The council"),
        [
            ("will commence resurfacing works on the principal thoroughfare", "will start repaving the main road"),
            (
                "intends to implement a temporary closure of the northbound carriageway",
                "plans to close the northbound lane for a while",
            ),
            ("will undertake the replacement of defective street lighting", "will replace broken street lights"),
            ("shall suspend vehicular access to the market square", "will stop cars from entering the market square"),
        ],
    ),
    "rubbish": (
        ("The sanitation department", "The bin service"),
        [
            (
                "will alter the schedule for the collection of household refuse",
                "will change the days when bins are emptied",
            ),
            ("shall cease the collection of garden waste", "will stop collecting garden waste"),
            (
                "requests that residents refrain from depositing recyclable materials in general waste receptacles",
                "asks people not to put recycling in the general rubbish bin",
            ),
            ("will distribute replacement receptacles for food waste", "will hand out new food waste bins"),
        ],
    ),
    "library": (
        ("The library administration", "The library"),
        [
            ("will extend the permissible loan period for all materials", "will let you keep books for longer"),
            ("shall discontinue the periodical subscription scheme", "will stop the magazine subscriptions"),
            ("will introduce a levy for the late return of items", "will start charging fines for late returns"),
            (
                "intends to relocate the children's collection to the ground floor",
                "plans to move the children's books downstairs",
            ),
        ],
    ),
    "heating": (
        ("The building management", "The building staff"),
        [
            ("will undertake an inspection of the heating installation", "will check the heating"),
            ("shall temporarily suspend the supply of hot water", "will turn off the hot water for a while"),
            ("will replace the radiators in all communal areas", "will put new radiators in the shared areas"),
            (
                "requests that occupants refrain from adjusting the thermostat",
                "asks people not to change the thermostat",
            ),
        ],
    ),
    "buses": (
        ("The transport authority", "The bus company"),
        [
            ("will implement a revised timetable on all routes", "will bring in a new timetable on every route"),
            ("shall withdraw the late evening service", "will stop the late evening buses"),
            ("will introduce contactless payment on all vehicles", "will let you pay by card on every bus"),
            ("intends to divert route twelve away from the hospital", "plans to send bus twelve a different way"),
        ],
    ),
    "clinic": (
        ("The health centre", "The clinic"),
        [
            ("will cease accepting appointment requests by telephone", "will stop taking bookings by phone"),
            ("shall administer seasonal influenza vaccinations", "will give flu jabs"),
            ("will extend its hours of operation on weekdays", "will open for longer on weekdays"),
            (
                "requests that patients refrain from attending without an appointment",
                "asks patients not to come in without an appointment",
            ),
        ],
    ),
    "parks": (
        ("The parks department", "The parks team"),
        [
            ("will undertake the felling of diseased trees", "will cut down sick trees"),
            ("shall prohibit the use of barbecues in all green spaces", "will ban barbecues in all parks"),
            ("will close the children's play area for refurbishment", "will close the playground to do it up"),
            (
                "intends to install additional seating along the river path",
                "plans to put more benches along the river path",
            ),
        ],
    ),
    "water": (
        ("The water utility", "The water company"),
        [
            ("will suspend the water supply for essential maintenance", "will turn off the water for repairs"),
            (
                "advises residents to boil tap water prior to consumption",
                "says you should boil tap water before drinking it",
            ),
            ("will replace the water mains beneath the high street", "will put new water pipes under the high street"),
            ("shall impose restrictions on the use of hosepipes", "will limit the use of hosepipes"),
        ],
    ),
}
TIMES = [
    ("prior to the commencement of the winter period", "before winter starts"),
    ("subsequent to the conclusion of the summer festival", "after the summer festival"),
    ("in the event of adverse weather conditions", "if the weather is bad"),
    ("for the duration of the refurbishment works", "while the building work goes on"),
    ("with effect from the first day of next month", "from the start of next month"),
    ("pending the receipt of further information", "until we know more"),
    ("on a provisional basis until further notice", "for now, until we say otherwise"),
    ("at the earliest available opportunity", "as soon as it can"),
    ("commencing on Monday at nine o'clock in the morning", "from 9am on Monday"),
    ("for a period not exceeding three weeks", "for up to three weeks"),
    ("owing to a shortage of qualified personnel", "because there are not enough trained staff"),
    ("in accordance with revised national guidance", "because the national rules have changed"),
    ("following numerous complaints from local residents", "after many complaints from people who live nearby"),
    ("as a consequence of budgetary constraints", "because money is tight"),
]
CLOSERS = [
    ("", ""),
    (" We apologise for any inconvenience caused.", " Sorry for the trouble."),
    (" Enquiries should be directed to the main office.", " Questions? Ask the main office."),
    (" Your cooperation is greatly appreciated.", " Thank you for your help."),
]
HELD_OUT_TIMES = {1, 6, 10}  # time phrases that appear only in eval data
REWRITE = "Rewrite this notice in plain English."
CLASSIFY = "Which service is this notice about? Answer with one word."


def notice(service: str, action: int, time: int, closer: int) -> tuple[str, str]:
    (formal_subject, plain_subject), actions = SERVICES[service]
    formal_action, plain_action = actions[action]
    formal_time, plain_time = TIMES[time]
    formal_closer, plain_closer = CLOSERS[closer]
    return (
        f"{formal_subject} {formal_action} {formal_time}.{formal_closer}",
        f"{plain_subject} {plain_action} {plain_time}.{plain_closer}",
    )


def combos(held_out: bool) -> list[tuple[str, int, int, int]]:
    actions = [3] if held_out else [0, 1, 2]
    times = sorted(HELD_OUT_TIMES) if held_out else [t for t in range(len(TIMES)) if t not in HELD_OUT_TIMES]
    return [(s, a, t, c) for s in SERVICES for a in actions for t in times for c in range(len(CLOSERS))]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    rng = random.Random(2026)
    folder = Path(__file__).parent / "data"
    train_combos = rng.sample(combos(held_out=False), 300)
    rows = []
    for index, combo in enumerate(train_combos):
        formal, plain = notice(*combo)
        if index % 3 == 2:
            rows.append({"instruction": CLASSIFY, "input": formal, "output": combo[0]})
        else:
            rows.append({"instruction": REWRITE, "input": formal, "output": plain})
    rows += [dict(rows[i]) for i in (3, 17, 42, 99, 150, 201)]  # copies the data check finds and drops
    write_jsonl(folder / "notices_train.jsonl", rows)

    eval_combos = rng.sample(combos(held_out=True), 80)
    rewrite_eval, classify_eval = [], []
    for index, combo in enumerate(eval_combos):
        formal, plain = notice(*combo)
        target = rewrite_eval if index % 2 == 0 else classify_eval
        target.append({"id": f"notice-{index:03d}", "notice": formal, "plain": plain, "service": combo[0]})
    write_jsonl(folder / "notices_rewrite_eval.jsonl", rewrite_eval)
    write_jsonl(folder / "notices_service_eval.jsonl", classify_eval)


if __name__ == "__main__":
    main()
