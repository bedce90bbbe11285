"""Build a small captioned dataset from the labelled real clips in ../shared/data/sounds.

The clips carry labels, not human captions, so we write five captions per clip from each
label (templated, e.g. "A dog barks.", "A dog is barking.", ...). Clips whose label does not
name an audible source (tuxpaint's road signs, flags, candy, ...) are left out.

Each clip gets:
  label    fine class, for same-class retrieval precision (e.g. "dog", "baby", "airport")
  source   coarse sound source, for "does the caption name the source" (e.g. "dog", "bird")
  keywords words whose presence in a caption means the source was named

Splits are deterministic: TAU keeps its own train/test lists (val carved out of train);
the other clips are split per label by a hash of the file name (about 60/15/25).

Usage: python bench/quality/sounds_dataset.py OUT_DIR   (writes OUT_DIR/{train,val,test}.jsonl)
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

SOUNDS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sounds"

# The clips are two kinds of audio, reported apart as well as together: sound events (sound
# effects, animals, baby cries; 0.2-10 s, the closer kind to AudioCaps' 10 s AudioSet clips) and
# one-second urban scenes (TAU), on which every system scores near 0 CIDEr-D.
SCENE_PREFIX = "tau_"


def kinds(ids: list[str]) -> dict[str, list[str]]:
    """``{"events": ids, "scenes": ids}`` of the labelled clips' ``ids`` (empty kinds left out)."""
    out = {
        "events": [i for i in ids if not i.startswith(SCENE_PREFIX)],
        "scenes": [i for i in ids if i.startswith(SCENE_PREFIX)],
    }
    return {k: v for k, v in out.items() if v}


# noun -> (verb 3rd person, verb -ing, keywords): how a source sounds and is named.
ANIMALS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "frog": ("croaks", "croaking", ("frog", "frogs", "croak", "toad")),
    "dog": ("barks", "barking", ("dog", "dogs", "bark", "barks", "barking", "puppy", "howl")),
    "cat": ("meows", "meowing", ("cat", "cats", "meow", "meows", "meowing", "kitten", "purr")),
    "cow": ("moos", "mooing", ("cow", "cows", "moo", "moos", "mooing", "cattle", "bull")),
    "horse": ("neighs", "neighing", ("horse", "horses", "neigh", "neighs", "whinny", "gallop")),
    "sheep": ("bleats", "bleating", ("sheep", "lamb", "bleat", "bleats", "bleating", "goat")),
    "pig": (
        "oinks",
        "oinking",
        ("pig", "pigs", "oink", "oinks", "grunt", "grunts", "grunting", "hog"),
    ),
    "duck": ("quacks", "quacking", ("duck", "ducks", "quack", "quacks", "quacking")),
    "owl": ("hoots", "hooting", ("owl", "owls", "hoot", "hoots", "hooting")),
    "rooster": ("crows", "crowing", ("rooster", "crow", "crows", "crowing", "chicken", "cock")),
    "bird": (
        "chirps",
        "chirping",
        (
            "bird",
            "birds",
            "chirp",
            "chirps",
            "chirping",
            "tweet",
            "tweeting",
            "sing",
            "singing",
            "squawk",
        ),
    ),
    "insect": (
        "buzzes",
        "buzzing",
        (
            "insect",
            "insects",
            "bee",
            "bees",
            "buzz",
            "buzzes",
            "buzzing",
            "fly",
            "mosquito",
            "cricket",
            "crickets",
            "chirping",
        ),
    ),
    "animal": (
        "calls",
        "calling",
        (
            "animal",
            "animals",
            "growl",
            "growls",
            "roar",
            "roars",
            "grunt",
            "grunts",
            "howl",
            "squeal",
            "bellow",
        ),
    ),
}
BIRDS = {
    "blackbird",
    "crow",
    "cuckoo",
    "drake",
    "duck",
    "gander",
    "hen",
    "heron",
    "lark",
    "rhea",
    "owl",
    "penguin",
    "quetzal",
    "rooster",
    "seagull",
    "toucan",
    "turkey",
    "vulture",
}

# tuxpaint household / music / vehicle files -> (label, five captions, keywords)
THINGS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "household__Washing-machine.ogg": (
        "washing_machine",
        (
            "A washing machine runs.",
            "A washing machine is spinning.",
            "The hum of a running washing machine.",
            "A machine rumbles as it washes clothes.",
            "A washer churns and whirs.",
        ),
        ("washing", "machine", "washer", "spin", "spinning", "motor", "whir", "hum"),
    ),
    "household__arttools__scissors_small_closed.ogg": (
        "scissors",
        (
            "Scissors snip.",
            "A pair of scissors is cutting.",
            "Someone cuts with scissors.",
            "Scissors close with a snip.",
            "Small scissors snip paper.",
        ),
        ("scissors", "cut", "cuts", "cutting", "snip", "snipping", "clip"),
    ),
    "household__arttools__scissors_small_open.ogg": (
        "scissors",
        (
            "Scissors open with a click.",
            "A pair of scissors is opened.",
            "Someone opens scissors.",
            "Scissors snip in the air.",
            "Small scissors click open.",
        ),
        ("scissors", "cut", "cuts", "cutting", "snip", "snipping", "clip"),
    ),
    "household__dishes__bottle.ogg": (
        "glass",
        (
            "A glass bottle clinks.",
            "Glass is clinking.",
            "Someone taps a glass bottle.",
            "A bottle rattles on a table.",
            "Glass bottles clink together.",
        ),
        ("glass", "bottle", "bottles", "clink", "clinks", "clinking", "dishes", "jar"),
    ),
    "household__dishes__glass.ogg": (
        "glass",
        (
            "Water is poured into a glass.",
            "A glass clinks.",
            "Someone fills a glass with water.",
            "Liquid splashes in a glass.",
            "A glass of water is set down.",
        ),
        ("glass", "water", "pour", "pours", "pouring", "clink", "liquid", "splash"),
    ),
    "household__kettle.ogg": (
        "kettle",
        (
            "An electric kettle boils water.",
            "A kettle is boiling.",
            "Water bubbles in a kettle.",
            "A kettle heats water and hisses.",
            "The rumble of a boiling kettle.",
        ),
        ("kettle", "boil", "boils", "boiling", "water", "bubbling", "hiss", "steam"),
    ),
    "household__toilet.ogg": (
        "toilet",
        (
            "A toilet flushes.",
            "A toilet is flushed.",
            "Water rushes as a toilet flushes.",
            "Someone flushes a toilet.",
            "The gurgle of a flushing toilet.",
        ),
        ("toilet", "flush", "flushes", "flushing", "water", "drain"),
    ),
    "household__tools__hammer.ogg": (
        "hammer",
        (
            "A hammer strikes a nail.",
            "Someone is hammering.",
            "Hammering on wood.",
            "A hammer bangs repeatedly.",
            "A person pounds with a hammer.",
        ),
        (
            "hammer",
            "hammering",
            "hammers",
            "bang",
            "banging",
            "pound",
            "pounding",
            "knock",
            "tapping",
            "hit",
        ),
    ),
    "household__tools__mallet_metal.ogg": (
        "hammer",
        (
            "A metal mallet strikes.",
            "Someone hits metal with a mallet.",
            "Metal clangs under a mallet.",
            "A mallet bangs on metal.",
            "A heavy hammer hits metal.",
        ),
        ("mallet", "hammer", "metal", "clang", "bang", "banging", "hit", "strike", "pound"),
    ),
    "household__tools__saw.ogg": (
        "saw",
        (
            "A saw cuts through wood.",
            "Someone is sawing.",
            "Sawing wood by hand.",
            "A hand saw rasps back and forth.",
            "Wood is being sawed.",
        ),
        ("saw", "sawing", "sawed", "cut", "cutting", "wood"),
    ),
    "household__vacuum_cleaner.ogg": (
        "vacuum",
        (
            "A vacuum cleaner runs.",
            "Someone is vacuuming.",
            "A vacuum cleaner hums loudly.",
            "The whine of a vacuum cleaner.",
            "A vacuum motor roars.",
        ),
        ("vacuum", "vacuuming", "cleaner", "motor", "hum", "whine", "roar"),
    ),
    "hobbies__music__percussion__cymbal_crash.ogg": (
        "drum",
        (
            "A cymbal crashes.",
            "Someone hits a crash cymbal.",
            "A cymbal rings out.",
            "A loud cymbal crash.",
            "A drummer strikes a cymbal.",
        ),
        ("cymbal", "crash", "drum", "drums", "music", "percussion"),
    ),
    "hobbies__music__percussion__drum_tomtom_floor.ogg": (
        "drum",
        (
            "A drum is played.",
            "Someone beats a floor tom drum.",
            "A drum booms.",
            "Drum beats.",
            "A drummer hits a tom drum.",
        ),
        ("drum", "drums", "drumming", "beat", "beats", "music", "percussion"),
    ),
    "hobbies__music__percussion__drumkit.ogg": (
        "drum",
        (
            "A drum kit is played.",
            "Someone plays the drums.",
            "Drums and cymbals play a beat.",
            "A drummer plays a rhythm.",
            "Drumming on a drum set.",
        ),
        ("drum", "drums", "drumming", "beat", "music", "percussion", "cymbal"),
    ),
    "hobbies__music__string__cello.ogg": (
        "strings",
        (
            "A cello plays.",
            "Someone plays the cello.",
            "A cello plays a slow melody.",
            "Bowed strings play music.",
            "A musician plays a cello.",
        ),
        (
            "cello",
            "music",
            "violin",
            "string",
            "strings",
            "instrument",
            "melody",
            "playing",
            "plays",
        ),
    ),
    "hobbies__music__string__violin.ogg": (
        "strings",
        (
            "A violin plays.",
            "Someone plays the violin.",
            "A violin plays a melody.",
            "Bowed strings play music.",
            "A musician plays a violin.",
        ),
        (
            "violin",
            "music",
            "cello",
            "string",
            "strings",
            "instrument",
            "melody",
            "playing",
            "plays",
            "fiddle",
        ),
    ),
    "hobbies__music__wind__bassoon.ogg": (
        "wind_instrument",
        (
            "A bassoon plays.",
            "Someone plays the bassoon.",
            "A woodwind instrument plays a melody.",
            "A low reed instrument plays.",
            "A musician plays a bassoon.",
        ),
        (
            "bassoon",
            "music",
            "instrument",
            "woodwind",
            "horn",
            "melody",
            "playing",
            "plays",
            "clarinet",
            "saxophone",
            "trumpet",
        ),
    ),
    "vehicles__emergency__firetruck.ogg": (
        "siren",
        (
            "A fire truck siren wails.",
            "A siren blares from a fire truck.",
            "An emergency vehicle passes with its siren on.",
            "A siren wails loudly.",
            "A fire engine drives by with sirens.",
        ),
        (
            "siren",
            "sirens",
            "fire",
            "truck",
            "engine",
            "emergency",
            "vehicle",
            "ambulance",
            "police",
        ),
    ),
    "naturalforces__lightningbolt.ogg": (
        "thunder",
        (
            "Thunder cracks.",
            "A lightning bolt strikes with thunder.",
            "Thunder rumbles loudly.",
            "A loud crack of thunder.",
            "Thunder booms in a storm.",
        ),
        ("thunder", "lightning", "storm", "thunderstorm", "rumble", "rumbles", "crack", "rain"),
    ),
    "seasonal__newyears__fireworks.ogg": (
        "fireworks",
        (
            "Fireworks explode.",
            "Fireworks are going off.",
            "Loud fireworks pop and bang.",
            "Fireworks burst in the sky.",
            "A series of firework explosions.",
        ),
        (
            "firework",
            "fireworks",
            "explode",
            "explosion",
            "explosions",
            "bang",
            "bangs",
            "pop",
            "gunshot",
            "gunshots",
        ),
    ),
}

SCENES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "airport": (
        (
            "People talk in a busy airport terminal.",
            "Ambient noise inside an airport.",
            "Announcements and chatter in an airport.",
            "Travellers walk through an airport hall.",
            "A crowd murmurs in an airport.",
        ),
        ("airport", "terminal", "announcement", "people", "crowd", "chatter", "talking"),
    ),
    "bus": (
        (
            "A bus drives along with passengers inside.",
            "The engine of a moving bus hums.",
            "Passengers ride a bus.",
            "A bus rumbles down the road.",
            "Noise inside a moving bus.",
        ),
        ("bus", "engine", "vehicle", "driving", "drives", "passengers", "rumble"),
    ),
    "metro": (
        (
            "A metro train runs on its tracks.",
            "Noise inside a moving subway train.",
            "A subway car rattles along.",
            "A train rumbles through a tunnel.",
            "Passengers ride the metro.",
        ),
        ("metro", "subway", "train", "tracks", "rail", "rumble", "rattles"),
    ),
    "metro_station": (
        (
            "A train arrives at a metro station.",
            "People wait in a subway station.",
            "Echoing noise in a metro station.",
            "A subway train pulls into a station.",
            "Footsteps and voices in an underground station.",
        ),
        ("metro", "subway", "station", "train", "people", "footsteps"),
    ),
    "park": (
        (
            "Birds chirp in a quiet park.",
            "Ambient sounds of a city park.",
            "Wind and distant voices in a park.",
            "People walk through a park.",
            "Birds sing while wind blows in a park.",
        ),
        ("park", "birds", "bird", "chirp", "chirping", "wind", "outdoors"),
    ),
    "public_square": (
        (
            "People talk in a public square.",
            "Voices and footsteps in a city square.",
            "A crowd murmurs in an open square.",
            "Ambient noise of a busy square.",
            "People walk across a town square.",
        ),
        ("square", "people", "crowd", "voices", "talking", "footsteps", "chatter"),
    ),
    "shopping_mall": (
        (
            "People talk in a shopping mall.",
            "A crowd murmurs in a mall.",
            "Ambient chatter inside a shopping centre.",
            "Shoppers walk and talk in a mall.",
            "Voices echo in a busy mall.",
        ),
        ("mall", "shopping", "people", "crowd", "chatter", "voices", "talking"),
    ),
    "street_pedestrian": (
        (
            "People walk along a busy street.",
            "Footsteps and voices on a pedestrian street.",
            "Pedestrians talk as they walk.",
            "A crowd walks down a street.",
            "City street noise with people walking.",
        ),
        ("street", "people", "pedestrians", "footsteps", "walking", "voices", "crowd"),
    ),
    "street_traffic": (
        (
            "Cars drive by on a busy street.",
            "Traffic passes on a city road.",
            "Vehicles drive past.",
            "The noise of street traffic.",
            "Cars and trucks pass by.",
        ),
        ("traffic", "car", "cars", "vehicle", "vehicles", "road", "street", "truck", "engine"),
    ),
    "tram": (
        (
            "A tram runs along its tracks.",
            "Noise inside a moving tram.",
            "A tram rattles through the city.",
            "A streetcar rumbles along.",
            "Passengers ride a tram.",
        ),
        ("tram", "streetcar", "train", "tracks", "rail", "rumble", "vehicle"),
    ),
}
BABY = (
    (
        "A baby cries.",
        "A baby is crying loudly.",
        "An infant wails.",
        "A small child cries and screams.",
        "A baby sobs and cries.",
    ),
    ("baby", "infant", "child", "cry", "cries", "crying", "wail", "wails", "toddler"),
)


@dataclass(frozen=True)
class LabelledClip:
    id: str
    path: str
    label: str
    source: str
    captions: tuple[str, ...]
    keywords: tuple[str, ...]


def _animal_captions(noun: str, kind: str) -> tuple[str, ...]:
    verb, verbing, _ = ANIMALS[kind]
    art = "An" if noun[0] in "aeiou" else "A"
    return (
        f"{art} {noun} {verb}.",
        f"{art} {noun} is {verbing}.",
        f"The sound of {art.lower()} {noun} {verbing}.",
        f"{art} {noun} {verb} several times.",
        f"{art} {noun} {verb} nearby.",
    )


def labelled_clips(root: Path = SOUNDS) -> list[LabelledClip]:
    """Every usable labelled clip under ``root`` with five captions written from its label."""
    clips: list[LabelledClip] = []
    for mp3 in sorted((root / "animals_cc0").glob("*.mp3")):
        noun = mp3.stem
        kind = noun if noun in ANIMALS else "animal"
        clips.append(
            LabelledClip(
                f"cc0_{noun}",
                str(mp3),
                noun,
                kind,
                _animal_captions(noun, kind),
                ANIMALS[kind][2] + (noun,),
            )
        )
    for mp3 in sorted((root / "esc10_baby_cry").glob("*.mp3")):
        clips.append(LabelledClip(f"esc_{mp3.stem}", str(mp3), "baby", "baby", BABY[0], BABY[1]))
    with open(root / "tuxpaint" / "metadata.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            name, cat = row["file"], row["category"]
            path = root / "tuxpaint" / "audio" / name
            if name in THINGS:
                label, caps, kw = THINGS[name]
                clips.append(
                    LabelledClip(f"tux_{Path(name).stem}", str(path), label, label, caps, kw)
                )
            elif cat.startswith("animals/"):
                noun = Path(row["orig_path"]).stem.split("_")[0].lower()
                if cat == "animals/birds" or noun in BIRDS:
                    kind, label = (
                        (
                            "duck"
                            if noun in {"duck", "drake"}
                            else "owl"
                            if noun == "owl"
                            else "rooster"
                            if noun == "rooster"
                            else "bird"
                        ),
                        "bird",
                    )
                elif cat == "animals/insects":
                    kind, label = "insect", "insect"
                else:
                    kind = noun if noun in ANIMALS else ("frog" if "amphib" in cat else "animal")
                    label = noun if noun in ANIMALS else "animal"
                kw = ANIMALS[kind][2] + (noun, "animal")
                clips.append(
                    LabelledClip(
                        f"tux_{Path(name).stem}",
                        str(path),
                        label,
                        kind,
                        _animal_captions(noun, kind),
                        kw,
                    )
                )
    for split_file in ("train.csv", "test.csv"):
        with open(root / "tau_scenes_1s" / split_file, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                scene = row["scene_label"]
                path = root / "tau_scenes_1s" / row["filename"]
                clips.append(
                    LabelledClip(
                        f"{SCENE_PREFIX}{path.stem}", str(path), scene, scene, *SCENES[scene]
                    )
                )
    return clips


def split_of(clip: LabelledClip, root: Path = SOUNDS) -> str:
    """Deterministic split: TAU's own test list is our test; elsewhere a file-name hash."""
    h = int(hashlib.sha1(clip.id.encode()).hexdigest()[:8], 16) % 100
    if clip.id.startswith(SCENE_PREFIX):
        test_names = _tau_test(root)
        if Path(clip.path).name in test_names:
            return "test"
        return "val" if h < 15 else "train"
    return "train" if h < 60 else ("val" if h < 75 else "test")


_TAU_TEST: set[str] | None = None


def _tau_test(root: Path) -> set[str]:
    global _TAU_TEST
    if _TAU_TEST is None:
        with open(root / "tau_scenes_1s" / "test.csv", newline="", encoding="utf-8") as f:
            _TAU_TEST = {Path(r["filename"]).name for r in csv.DictReader(f, delimiter="\t")}
    return _TAU_TEST


def write_dataset(out: Path, root: Path = SOUNDS) -> dict[str, int]:
    """Write ``out/{train,val,test}.jsonl`` (generic manifest: id, path, captions + labels)."""
    if not root.is_dir():
        raise SystemExit(f"{root} not found: this script needs ../shared/data/sounds")
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for c in labelled_clips(root):
        rows[split_of(c, root)].append(
            json.dumps(
                {
                    "id": c.id,
                    "path": c.path,
                    "captions": list(c.captions),
                    "label": c.label,
                    "source": c.source,
                    "keywords": list(c.keywords),
                }
            )
        )
    for split, lines in rows.items():
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {k: len(v) for k, v in rows.items()}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "out_dir",
        nargs="?",
        type=Path,
        default=Path("runs/sounds"),
        metavar="OUT_DIR",
        help="where {train,val,test}.jsonl go (default: runs/sounds)",
    )
    args = ap.parse_args()
    print(json.dumps(write_dataset(args.out_dir)), file=sys.stderr)
