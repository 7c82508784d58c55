"""Tokenizers: WordPiece ids equal the reference BERT tokenizer; SentencePiece."""

import numpy as np
import pytest

from lxmert_jax.data import tokenization

# Real English sentences (and a few other scripts): punctuation, numbers,
# accents, contractions, hyphens, long words, casing, odd whitespace.
SENTENCES = [
    'A man is riding a bicycle down the street.',
    'Two dogs are playing with a red ball in the park.',
    'The cat sat on the mat, looking bored.',
    'What color is the umbrella?',
    'How many people are standing near the bus stop?',
    'Is there a clock on the wall?',
    'She said, "I\'ll be there at 5 o\'clock."',
    "It's raining cats and dogs outside!",
    "They're going to the market tomorrow morning.",
    "We've been waiting for over 45 minutes.",
    "Don't touch that - it's hot!",
    'The well-known author signed 1,250 copies of her book.',
    'He paid $3.50 for a cup of coffee.',
    'The temperature dropped to -12°C last night.',
    'My phone number is 555-0199; call me anytime.',
    'The café on the corner serves crème brûlée.',
    "Zoë and Chloë visited the Musée d'Orsay in Paris.",
    "Señor García's niño plays fútbol every Sunday.",
    "The naïve résumé impressed nobody at the fiancée's firm.",
    'Über-efficient engineers built the façade in 1998.',
    'Antidisestablishmentarianism is a very long word.',
    'Pneumonoultramicroscopicsilicovolcanoconiosis is even longer.',
    'The quick brown fox jumps over the lazy dog.',
    'THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG.',
    'tHe QuIcK bRoWn FoX jUmPs OvEr ThE lAzY dOg.',
    'A woman wearing a yellow raincoat holds an umbrella.',
    'A group of children sitting around a wooden table.',
    'An elephant standing next to a smaller elephant in a zoo.',
    'Several airplanes parked on the tarmac at an airport.',
    'A plate of food with broccoli, carrots and rice.',
    'A young boy swinging a baseball bat at a pitch.',
    'Two giraffes eating leaves from a tall tree.',
    'A kitchen with stainless-steel appliances and granite countertops.',
    'A train traveling down tracks next to a forest.',
    'A pizza with pepperoni, mushrooms, and olives on a table.',
    'People walking on a snowy sidewalk in the city.',
    'A stop sign on a street corner near a red-brick building.',
    'A man in a suit and tie talking on a cell phone.',
    'A bathroom with a white toilet and a sink.',
    'A laptop computer sitting on top of a desk.',
    'Is the man wearing glasses?',
    'What is the woman holding in her left hand?',
    'Which animal is bigger, the horse or the dog?',
    'Where is the remote control?',
    'Why is the street wet?',
    'What time does the clock show?',
    'What sport is being played?',
    'Are the lights on?',
    'How many slices of pizza are left?',
    'What is the name of the store?',
    'Is this a vegetarian meal?',
    'What brand is the laptop?',
    'What is the number on the train?',
    'Who is sitting on the bench?',
    "What's on the plate?",
    "What're they doing?",
    'Is it sunny or cloudy?',
    'Does the dog have a collar?',
    'Can you see the ocean?',
    'Would you eat this?',
    "I can't believe it's not butter.",
    "You shouldn't've done that.",
    "Y'all aren't ready for this.",
    "O'Brien's pub opens at 11:30 a.m.",
    'The U.S.A. and the U.K. signed the treaty.',
    'Dr. Smith, Ph.D., teaches at M.I.T.',
    'e.g., i.e., etc., and vs. are abbreviations.',
    'The ratio was 3:2, i.e. 60% to 40%.',
    'She scored 98.6% on the test (out of 100).',
    'Version 2.0.1-beta was released on 2019-07-15.',
    'The file is named data_v2_final.tsv.',
    'Email me at someone@example.com or visit www.example.org.',
    'Use the #hashtag and @mention wisely.',
    'Prices rose by ~5% (approximately) in Q3.',
    'He shouted: "Stop!!!" and ran away...',
    'Wait -- what did you just say?',
    'The so-called "experts" were wrong.',
    'A state-of-the-art, end-to-end, self-supervised model.',
    'Mother-in-law, passer-by, and runner-up are compound nouns.',
    'The 21st-century skyline glittered.',
    'Roughly 7.5 billion people live on Earth.',
    'The year 1066 marks the Norman conquest.',
    'Room 101 is on the first floor.',
    'The 3rd, 4th, and 5th floors are closed.',
    "I'd rather have 2 apples than 3 oranges.",
    'There are 12 eggs in a dozen.',
    'One, two, three, four, five, six, seven, eight, nine, ten.',
    'The score was 2-1 after extra time.',
    'A 4x4 truck drove through the mud.',
    'The TV was 55" wide.',
    'Hello, world!',
    'Goodbye...',
    'Hmm.',
    'Yes!',
    'No?',
    'OK.',
    'A',
    'a b c d e f g',
    '   leading and trailing spaces   ',
    'Tabs\tbetween\twords\there.',
    'Multiple     spaces    between   words.',
    'An antique grandfather clock ticked loudly.',
    'A skateboarder performs a trick on a half-pipe.',
    'A surfer rides a large wave in the ocean.',
    'A red double-decker bus drives through London.',
    'A black-and-white photo of an old car.',
    'A vase filled with pink and white flowers.',
    "A teddy bear sitting on a child's bed.",
    'A fire hydrant painted blue and yellow.',
    'A man kiteboarding on choppy water.',
    'Cows grazing in a green pasture beneath mountains.',
    'A bowl of cereal with sliced bananas and milk.',
    'Someone is cutting a birthday cake with candles.',
    'A cluttered desk with two monitors and a keyboard.',
    'Sheep being herded by a border collie.',
    'A motorcycle parked beside a gas station pump.',
    'Zebras crossing a dusty road in the savanna.',
    'A bench overlooking a calm lake at sunset.',
    "The knight's armour gleamed in the sunlight.",
    'Colour, flavour, and honour are British spellings.',
    'Color, flavor, and honor are American spellings.',
    'Jalapeño peppers add heat to the salsa.',
    'The piñata burst, scattering candy everywhere.',
    'Björk and Sigur Rós are from Iceland.',
    'Dvořák composed the New World Symphony.',
    'Łódź is a city in Poland.',
    'Ångström is a unit of length.',
    'The Æsir were gods in Norse mythology.',
    'Smörgåsbord is a Swedish buffet.',
    'Façade, déjà vu, and naïveté are loanwords.',
    'Ça va? Oui, ça va bien.',
    'Straße is the German word for street.',
    'İstanbul was once called Constantinople.',
    'Α Greek letter alpha appears here.',
    'The π constant is about 3.14159.',
    'The equation E = mc² is famous.',
    'H₂O is the chemical formula for water.',
    'Temperatures ranged from 20° to 30°.',
    'He earned €1,000 and £500 last month.',
    'The price is ¥2,000 in Tokyo.',
    'He said it\'s "totally awesome," didn\'t he?',
    '‘Single curly quotes’ and “double curly quotes”.',
    'The em dash—used for emphasis—is common.',
    'An en dash – between ranges – like 10–20.',
    'Ellipsis… is a single character here.',
    'Bullet • points • are • listed.',
    'He wrote: (see Figure 3) [citation needed].',
    '{Curly braces} and <angle brackets> appear in code.',
    'The path is C:\\Users\\Public\\Documents.',
    'Use the | pipe and ^ caret and ~ tilde.',
    'Asterisks * and ampersands & are symbols.',
    'Percent % and dollar $ and hash # signs.',
    'Mr. and Mrs. Jones have three kids: Ann, Bob and Cy.',
    'Washington, D.C., is the capital of the United States.',
    "New York City's population exceeds 8 million.",
    'Mount Everest is 8,849 meters tall.',
    'The Pacific Ocean is the largest ocean on Earth.',
    'Shakespeare wrote Hamlet around 1600.',
    'Leonardo da Vinci painted the Mona Lisa.',
    'The Great Wall of China is visible from space? Not really.',
    'Photosynthesis converts light energy into chemical energy.',
    'Mitochondria are the powerhouse of the cell.',
    'DNA stands for deoxyribonucleic acid.',
    'The Internet revolutionized communication in the 1990s.',
    'Smartphones have become ubiquitous worldwide.',
    'Cryptocurrency prices are notoriously volatile.',
    'Machine-learning models require lots of training data.',
    'Transformers use self-attention mechanisms.',
    "BERT's WordPiece tokenizer splits rare words into subwords.",
    'Unbelievably, the unbreakable record was broken.',
    'Misunderstandings often lead to disagreements.',
    'Overcommitment underestimates interdependencies.',
    'Hyperparameters were tuned via cross-validation.',
    'Pre-training then fine-tuning is a common recipe.',
    'The 2020s began with a global pandemic.',
    'COVID-19 vaccines were developed rapidly.',
    'An 18-year-old won the tournament.',
    'The lottery jackpot reached $1.5B!',
    'Flight AA1234 departs at 06:45 from gate B12.',
    'The Wi-Fi password is hunter2.',
    'He\'s 6\'2" tall and weighs 180 lbs.',
    'Add 1/2 cup of sugar and 3/4 teaspoon of salt.',
    "It's 50/50 whether it'll rain.",
    "The kids' toys were scattered across the living room.",
    "James's car and the Joneses' house are nearby.",
    "Rock 'n' roll will never die.",
    "'Tis the season to be jolly.",
    "Ma'am, your order is ready.",
    "Fish 'n' chips, please.",
    'ALL CAPS SENTENCE WITH NUMBERS 123 AND SYMBOLS!?',
    'lowercase sentence without punctuation',
    'MiXeD cAsE wItH ÀcCéNtS',
    'A kitten napping in a cardboard box.',
    'A horse-drawn carriage on a cobblestone street.',
    'Fresh-baked croissants on a marble counter.',
    'A lighthouse standing on a rocky cliff.',
    'Hikers resting beside a mountain stream.',
    'A yellow taxi waiting at a traffic light.',
    'A chef tossing vegetables in a wok.',
    'A snowboarder flying off a jump.',
    'A little girl blowing bubbles in the garden.',
    'Penguins huddled together on the ice.',
    'A barista pouring latte art into a cup.',
    'A tennis player serving the ball.',
    'Two men playing chess in the park.',
    'A woman reading a newspaper on the subway.',
    'A dog catching a frisbee mid-air.',
    'Sailboats docked at a busy marina.',
    'A stack of pancakes drizzled with maple syrup.',
    'A toddler eating spaghetti with his hands.',
    "A parrot perched on a man's shoulder.",
    'Graffiti covers the wall of an abandoned building.',
    'A cyclist wearing a helmet and sunglasses.',
    'The sunset paints the sky orange and purple.',
    'A crowded beach on a hot summer day.',
    'An old woman knitting a scarf by the fireplace.',
    'Fireworks exploding over the city skyline.',
    'A farmer driving a tractor through a wheat field.',
    'A pile of autumn leaves in the backyard.',
    'Ducks swimming in a pond near the willow tree.',
    'A close-up of a honeybee on a sunflower.',
    'Students raising their hands in a classroom.',
    'A man juggling flaming torches at a festival.',
    'Two kids building a sandcastle at the beach.',
    'What is the man in the blue shirt doing?',
    'How many zebras are drinking water?',
    'Is the giraffe taller than the tree?',
    'What kind of bird is on the fence?',
    'Which direction is the arrow pointing?',
    'What does the sign say?',
    'Is the door open or closed?',
    'What shape is the table?',
    'Are there any clouds in the sky?',
    'How old is the child, approximately?',
    '我爱北京天安门',
    '日本語のテキストです。',
    'Emoji 😀 test 🎉!',
    'Zero\u200bwidth space',
    'Non-breaking\xa0space here',
    'áccent combining',
    '한국어 문장입니다',
    'Привет, мир!',
    'مرحبا بالعالم',
    '[MASK] token and [CLS] here',
    "x" * 150,  # longer than WordPiece's 100-character limit: [UNK]
]


def _reference_tokenizers():
  """The Python BERT tokenizer (the reference's algorithm) and the current one."""
  transformers = pytest.importorskip("transformers")
  vocab = tokenization.default_vocab_path()
  refs = {}
  try:
    from transformers.models.bert import BertTokenizerLegacy  # pylint: disable=g-import-not-at-top
    refs["python"] = BertTokenizerLegacy(vocab_file=vocab)
  except ImportError:
    # Before transformers 5 the Python implementation is `BertTokenizer`.
    refs["python"] = transformers.BertTokenizer(vocab_file=vocab)
  if "vocab" in transformers.BertTokenizer.__init__.__code__.co_varnames:
    refs["current"] = transformers.BertTokenizer(vocab=vocab)
  return refs


def test_wordpiece_ids_equal_bert_tokenizer():
  tok = tokenization.WordPieceTokenizer()
  ours = tok.tokenize_ids(SENTENCES)
  assert len(SENTENCES) >= 200
  for name, ref in _reference_tokenizers().items():
    for sent, ids in zip(SENTENCES, ours):
      expected = ref.convert_tokens_to_ids(ref.tokenize(sent))
      assert ids == expected, (name, sent)


def test_wordpiece_framing_and_special_ids():
  tok = tokenization.make_tokenizer("bert")
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
  assert tok.vocab_size == 30522
  ids, mask = tok.encode("  What colour is the cube?  ", 20)
  pieces = tok.tokenize_ids(["What colour is the cube?"])[0]
  n = len(pieces)
  assert ids.dtype == np.int32 and ids.shape == (20,)
  np.testing.assert_array_equal(ids[:n + 2], [101] + pieces + [102])
  assert (ids[n + 2:] == 0).all() and mask.sum() == n + 2
  long_ids, long_mask = tok.encode(" ".join(["word"] * 40), 20)
  assert long_ids[-1] == 102 and long_mask.all()
  assert (long_ids[1:19] == tok.token_to_id("word")).all()
  batch_ids, batch_mask = tok.encode_batch(SENTENCES[:5], 12)
  assert batch_ids.shape == batch_mask.shape == (5, 12)
  np.testing.assert_array_equal(batch_ids[2], tok.encode(SENTENCES[2], 12)[0])
  assert tok.decode(tok.encode("the cube is red", 8)[0]) == "[CLS] the cube is red [SEP]"


def test_sentencepiece_train_and_round_trip(tmp_path):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n".join(SENTENCES[:200] * 3), encoding="utf-8")
  tok = tokenization.train_sentencepiece([str(corpus)], 400, str(tmp_path / "spm" / "m"))
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
  assert tok.vocab_size <= 400
  for sent in SENTENCES[:50]:
    pieces = tok.tokenize_ids([sent])[0]
    # Control symbols never come out of text.
    assert not set(pieces) & {0, 2, 3, 4}
    assert tok.decode(pieces) == " ".join(sent.lower().split())
  ids, mask = tok.encode("A red cube [MASK] here.", 16)
  assert ids[0] == 2 and 3 in ids and ids.dtype == np.int32
  # Same interface through the factory, and picklable for grain workers.
  again = tokenization.make_tokenizer("spm", tok.path)
  assert again.tokenize_ids(SENTENCES[:3]) == tok.tokenize_ids(SENTENCES[:3])
  import pickle  # pylint: disable=g-import-not-at-top
  restored = pickle.loads(pickle.dumps(tok))
  assert restored.tokenize_ids(["red cube"]) == tok.tokenize_ids(["red cube"])
  assert tok.fingerprint != tokenization.make_tokenizer("bert").fingerprint


def test_sentencepiece_cli_reads_reference_json(tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  data = [{"img_id": "x", "sentf": {"mscoco": SENTENCES[:150]}, "labelf": {}}]
  path = tmp_path / "mscoco_train.json"
  path.write_text(json.dumps(data), encoding="utf-8")
  assert tokenization.main(["train-spm", "--input", str(path), "--vocab-size", "300",
                            "--out", str(tmp_path / "m")]) == 0
  assert (tmp_path / "m.model").exists()


def test_make_tokenizer_errors():
  with pytest.raises(ValueError):
    tokenization.make_tokenizer("nope")
  with pytest.raises(ValueError):
    tokenization.make_tokenizer("spm")
