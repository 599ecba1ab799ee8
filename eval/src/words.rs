//! Word lists for keys, values and distractors (fixed, so generated tasks are reproducible).

/// Nouns used as needle keys and word values.
pub const NOUNS: &[&str] = &[
    "ocean", "mountain", "river", "forest", "desert", "island", "valley", "canyon", "glacier",
    "meadow", "harbor", "volcano", "prairie", "lagoon", "tundra", "savanna", "reef", "marsh",
    "plateau", "delta", "falcon", "tiger", "dolphin", "panther", "sparrow", "beetle", "otter",
    "badger", "heron", "lynx", "violin", "trumpet", "guitar", "piano", "cello", "flute", "drum",
    "harp", "banjo", "oboe", "copper", "silver", "marble", "granite", "quartz", "amber", "cobalt",
    "jade", "onyx", "topaz", "lantern", "compass", "anchor", "ladder", "kettle", "mirror",
    "candle", "blanket", "basket", "helmet", "orchard", "vineyard", "garden", "cottage", "castle",
    "temple", "bridge", "tower", "market", "library",
];

/// Common English words for the common/frequent-words tasks.
pub const COMMON_WORDS: &[&str] = &[
    "apple", "bread", "chair", "dream", "eagle", "flame", "grape", "house", "image", "juice",
    "knife", "lemon", "music", "night", "olive", "paper", "queen", "radio", "stone", "table",
    "uncle", "voice", "water", "youth", "zebra", "angle", "brush", "cloud", "dance", "earth",
    "field", "ghost", "heart", "ivory", "jelly", "kayak", "light", "money", "nurse", "ocean",
    "plant", "quilt", "river", "sugar", "train", "urban", "vapor", "wheat", "xenon", "yacht",
];
