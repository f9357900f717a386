"""The customer-service dataset of chapter 09: questions to Northwind Home, a fictional online homeware shop, and the
answers its assistant should give (chapter 09, sections 5 and 6).

Everything here is generated in the project from templates, in plain Python: there is no external data to download,
and the same call always returns the same examples.

- :data:`KNOWLEDGE_BASE`: 18 short policy passages (returns, shipping, warranty...), one per topic, each with concrete
  facts that can be checked: "30 days", "€4.90", "24 hours".
- :data:`INTENTS`: what customers ask about. Each intent has at least 7 phrasings of the question (templates with slots
  such as ``{order}`` or ``{product}``), one reference answer that quotes its passage, the facts that answer must
  contain, and marker words that show an answer addresses the intent at all.
- :func:`examples` fills the templates. The split is **by template**, not by example: the last
  :data:`N_TEST_TEMPLATES` phrasings of each intent are held out for ``"test"``, so the test asks in wordings the model
  never saw in training, and a model that memorised the training sentences gains nothing from it.
- The four :data:`KB_ONLY_INTENTS` are never trained on: their questions (the ``"kb_only"`` split) can only be answered
  from the knowledge base, which is what retrieval (section 6) has to supply.
- :func:`messages` turns an example into chat messages, with retrieved passages or without; :func:`check_answer` scores
  a generated answer deterministically: does it address the intent, and does it state the policy's facts and no
  wrong values (a "14 days" where the policy says "30 days").
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType

SHOP = "Northwind Home"

SYSTEM_PROMPT = (
    f"You are the customer-service assistant of {SHOP}, an online homeware shop. "
    "Answer briefly, in one to three sentences, and quote the shop's policy exactly, with its numbers."
)

#: Slot values the templates draw from, besides order numbers ("NW-" and five digits). The lists are disjoint and no
#: value is a word of a template, so that a question can be mapped back to its template (the tests rely on it).
SLOT_VALUES = MappingProxyType(
    {
        "name": ("Anna", "Ben", "Chloe", "Daan", "Emma", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Lotte", "Noor", "Omar",
                 "Priya", "Sven", "Yara"),
        "product": ("linen duvet cover", "ceramic table lamp", "wool throw", "cotton bath towel set", "stoneware dinner set",
                    "velvet cushion", "jute rug", "glass vase", "bamboo laundry basket", "cast-iron casserole",
                    "wall mirror", "scented candle set"),
        "furniture": ("oak side table", "rattan armchair", "walnut bookshelf", "pine wardrobe", "oak dining table",
                      "metal bed frame", "desk chair", "TV cabinet"),
        "city": ("Antwerp", "Lyon", "Vienna", "Porto", "Munich", "Dublin", "Seville", "Copenhagen", "Gdansk", "Tallinn",
                 "Ljubljana", "Bologna"),
    }
)  # fmt: skip

ORDER_PREFIX = "NW-"

N_TEST_TEMPLATES = 2


@dataclass(frozen=True)
class Passage:
    """One policy passage of the knowledge base: ``id``, a ``title`` and the ``text`` retrieval returns.

    Taught in chapter 09, section 6.
    """

    id: str
    title: str
    text: str


@dataclass(frozen=True)
class Intent:
    """What a customer asks about: its ``name``, the ``passage_id`` that answers it, the question ``templates``,
    the reference ``answer`` (a template too), the ``facts`` that answer must contain (slots such as ``{order}``
    included) and the ``markers``, lowercase words any answer to this intent contains one of.

    Taught in chapter 09, section 5.
    """

    name: str
    passage_id: str
    templates: tuple[str, ...]
    answer: str
    facts: tuple[str, ...]
    markers: tuple[str, ...]


@dataclass(frozen=True)
class Example:
    """One filled-in question and its reference answer; ``facts`` has the slot values filled in and ``template`` is
    the index of the template within its intent.

    Taught in chapter 09, section 5.
    """

    intent: str
    template: int
    question: str
    answer: str
    facts: tuple[str, ...]
    passage_id: str


KNOWLEDGE_BASE: tuple[Passage, ...] = (
    Passage("tracking", "Order tracking",
            "Orders leave our warehouse within 1 business day. The dispatch email has a tracking link, and the status "
            "of every order is shown under My orders in your account."),
    Passage("returns", "Returns",
            "You can return any item within 30 days of delivery if it is unused and in its original packaging. "
            "Returns are free: print the prepaid label from My orders."),
    Passage("refunds", "Refunds",
            "Once a returned parcel arrives at our warehouse, we refund the original payment method within 5 business "
            "days and email you a confirmation."),
    Passage("shipping_costs", "Shipping costs",
            "Standard shipping within the Netherlands costs €4.90 and is free on orders from €60. "
            "Express shipping costs €9.90."),
    Passage("delivery", "Delivery times",
            "Standard delivery within the Netherlands takes 3–5 business days. Express delivery arrives the next "
            "business day if you order before 14:00."),
    Passage("password", "Password reset",
            "Choose 'Forgot password' on the sign-in page and we email you a reset link. The link is valid for 24 "
            "hours; after that, request a new one."),
    Passage("damaged", "Damaged items",
            "Report a damaged or faulty item within 48 hours of delivery, with a photo of the damage, through our "
            "contact form. We send a replacement or a full refund at no cost to you."),
    Passage("cancellation", "Cancelling an order",
            "You can cancel an order within 2 hours of placing it, under My orders. After that it is already being "
            "packed, and you can return it once it arrives instead."),
    Passage("contact", "Contact and opening hours",
            "Customer service is open Monday to Saturday, 9:00–18:00. Call us free on 0800 555 0142 or use the chat "
            "on our website."),
    Passage("warranty", "Warranty",
            "All our furniture and homeware carry a warranty of 2 years against manufacturing defects, counted from "
            "the delivery date. Normal wear and misuse are not covered."),
    Passage("international", "International shipping",
            "We deliver to all other EU countries for €14.90, and delivery takes 6–9 business days. We do not ship "
            "outside the EU."),
    Passage("gift_cards", "Gift cards",
            "Gift cards are valid for 12 months from the date of purchase and can be spent on any order in our online "
            "shop. They cannot be paid out in cash."),
    Passage("price_match", "Price match",
            "If you find the same item cheaper at another Dutch shop within 14 days of your purchase, send us the "
            "link and we pay you the difference."),
    Passage("loyalty", "Loyalty points",
            "Members of Northwind Club earn 1 point for every euro they spend. 100 points are worth €5 off a later "
            "order, and joining is free in your account."),
    Passage("payment", "Payment methods",
            "We accept credit and debit cards (Visa and Mastercard), PayPal and bank transfer. Orders paid by bank "
            "transfer ship once the payment arrives, usually within 2 business days."),
    Passage("exchanges", "Exchanges",
            "Exchanges for another size or colour of the same item are free within 30 days of delivery. Request one "
            "under My orders; we send the new item once the original is on its way back."),
    Passage("assembly", "Assembly service",
            "Our assembly service costs €29 per item: a fitter puts the furniture together in your home and takes "
            "the packaging away. Book it at checkout."),
    Passage("address", "Changing the delivery address",
            "You can change the delivery address of an order under My orders until it leaves our warehouse. If it has "
            "already shipped, contact customer service and we ask the carrier to redirect it."),
)  # fmt: skip


INTENTS: tuple[Intent, ...] = (
    Intent(
        "order_status", "tracking",
        ("Where is my order {order}?",
         "Hi, I'm {name}. Can you tell me the status of order {order}?",
         "I ordered a {product} last week (order {order}) and it still hasn't arrived. Any news?",
         "Has order {order} been shipped yet?",
         "How can I track {order}?",
         "Could you check on {order} for me? I haven't heard anything since I paid.",
         "{name} here, any idea when parcel {order} will turn up?"),
        "Orders leave our warehouse within 1 business day. You can follow order {order} with the tracking link in your "
        "dispatch email, or see its status any time under My orders.",
        ("{order}", "1 business day", "tracking link", "My orders"),
        ("track", "status", "dispatch"),
    ),
    Intent(
        "return_item", "returns",
        ("I'd like to return the {product} I bought.",
         "Can I send back a {product} if I don't like it?",
         "Hi, this is {name}. The {product} doesn't suit my living room; how do I return it?",
         "What is your return policy for a {product}?",
         "Is it too late to return my {product}? It came a couple of weeks ago.",
         "I changed my mind about the {product}. Can I give it back?",
         "How do returns work if I no longer want the {product}?"),
        "Yes, you can return the {product} within 30 days of delivery if it is unused and in its original packaging. "
        "Returns are free: print the prepaid label from My orders.",
        ("{product}", "30 days", "unused", "original packaging", "prepaid label"),
        ("return",),
    ),
    Intent(
        "refund_timing", "refunds",
        ("When will I get my refund? I sent the {product} back on Monday.",
         "Hi, {name} here. How long does a refund take?",
         "I returned order {order}. When does the money come back?",
         "My return of the {product} reached your warehouse. How soon is the refund paid?",
         "How many days until I see the money for the returned {product}?",
         "{name} again: still waiting for my money after sending back a {product}. How long should that take?",
         "Will the refund for order {order} go back to my card, and when?"),
        "Once your returned parcel arrives at our warehouse, we refund the original payment method within 5 business "
        "days and email you a confirmation.",
        ("5 business days", "original payment method"),
        ("refund", "money back"),
    ),
    Intent(
        "shipping_costs", "shipping_costs",
        ("How much do you charge for shipping on a {product}?",
         "Hi, {name} here. What does delivery cost with you?",
         "Is shipping free, or do I pay for postage? I'm ordering a {product}.",
         "What are your shipping fees? Thanks, {name}",
         "Do I have to pay extra to get the {product} sent to me?",
         "My basket is only a {product}; will you add a delivery charge?",
         "{name} asking: how much is standard versus express shipping?"),
        "Standard shipping within the Netherlands costs €4.90, and it is free on orders from €60. "
        "Express shipping costs €9.90.",
        ("€4.90", "€60", "€9.90"),
        ("shipping", "postage"),
    ),
    Intent(
        "delivery_times", "delivery",
        ("How long does delivery take for a {product}?",
         "If I order a {product} today, when will it arrive?",
         "Hi, it's {name}. How quickly do you deliver?",
         "Can I get the {product} by tomorrow?",
         "{name} here: how many days does standard delivery take?",
         "I need a {product} quickly for a party. What's the fastest you can get it to me?",
         "When can I expect my parcel if I order the {product} this morning?"),
        "Standard delivery within the Netherlands takes 3–5 business days. Express delivery arrives the next business "
        "day if you order before 14:00.",
        ("3–5 business days", "next business day", "14:00"),
        ("standard delivery", "express delivery", "next business day"),
    ),
    Intent(
        "password_reset", "password",
        ("Hi, this is {name}. I forgot my password; how do I reset it?",
         "{name} here, I can't sign in because I lost my password.",
         "The reset link you sent me doesn't work anymore. What now? - {name}",
         "How do I change my password? I want to check my order {order}.",
         "I'm locked out of my account and can't see my {product} order. Help!",
         "Where do I request a new password? My name is {name}.",
         "My login email is old and the link in it is dead. What should I do? ({name})"),
        "Choose 'Forgot password' on the sign-in page and we will email you a reset link. The link is valid for 24 "
        "hours; after that, simply request a new one.",
        ("Forgot password", "reset link", "24 hours"),
        ("password", "reset"),
    ),
    Intent(
        "damaged_item", "damaged",
        ("My {product} arrived broken. What can I do?",
         "The {product} came with a big scratch on it.",
         "Hi, {name} here. The box was crushed and the {product} inside is cracked.",
         "I just unpacked the {product} and it's damaged. Can I get a new one?",
         "The {product} I received is faulty.",
         "Your courier dropped my parcel and now the {product} is in pieces.",
         "Who do I tell that my new {product} has a chip in it?"),
        "I'm sorry the {product} arrived damaged. Please report it within 48 hours, with a photo of the damage, "
        "through our contact form, and we will send a replacement or a full refund at no cost to you.",
        ("{product}", "48 hours", "photo", "contact form"),
        ("damage", "faulty", "replacement"),
    ),
    Intent(
        "cancel_order", "cancellation",
        ("Please cancel order {order}.",
         "I made a mistake with order {order}. Can I still cancel it?",
         "Hi, {name} here, I want to cancel {order}, I picked the wrong {product}.",
         "How do I cancel my order {order}?",
         "I no longer need order {order}. Can you stop it?",
         "Is it possible to call off order {order}? I placed it this morning.",
         "I just ordered by accident ({order}). Can you undo that?"),
        "You can cancel order {order} within 2 hours of placing it, under My orders. After that it is already being "
        "packed, so please return it once it arrives instead.",
        ("{order}", "2 hours", "My orders"),
        ("cancel",),
    ),
    Intent(
        "contact", "contact",
        ("What are your opening hours? Thanks, {name}",
         "How can I reach a real person? I have a question about a {product}.",
         "Is customer service open on Sunday? {name}",
         "What's your phone number? I need to ask about order {order}.",
         "When can I call you about my {product}?",
         "Hi, {name} here. What time does your helpdesk close?",
         "Are you available on Saturdays if I have a problem with a {product}?"),
        "Our customer service is open Monday to Saturday, 9:00–18:00. You can call us free on 0800 555 0142 or use "
        "the chat on our website.",
        ("Monday", "Saturday", "9:00", "18:00", "0800 555 0142"),
        ("open", "call", "chat", "0800"),
    ),
    Intent(
        "warranty", "warranty",
        ("Is there a warranty on the {furniture}?",
         "How long is the guarantee on a {furniture}?",
         "The {furniture} I bought last year has a loose joint. Is that covered?",
         "Hi, it's {name}. What does your warranty cover?",
         "If my {product} stops working after a few months, what then?",
         "{name} asking: do your products come with a guarantee?",
         "My {furniture} has a defect after eight months. Can I still claim?"),
        "All our furniture and homeware carry a warranty of 2 years against manufacturing defects, counted from the "
        "delivery date. Normal wear and misuse are not covered.",
        ("2 years", "manufacturing defects"),
        ("warranty", "guarantee", "manufacturing defect"),
    ),
    Intent(
        "international_shipping", "international",
        ("Do you deliver to {city}?",
         "I live in {city}. Can I order from you?",
         "How long does shipping to {city} take?",
         "Hi, {name} here, moving to {city} next month. Will you still ship to me?",
         "What does it cost to send a {product} to {city}?",
         "Can I have my order sent to my sister in {city}?",
         "Is {city} inside your delivery area?"),
        "Yes, we deliver to {city}: we ship to all other EU countries for €14.90, and delivery takes 6–9 business days. "
        "We do not ship outside the EU.",
        ("{city}", "EU", "€14.90", "6–9 business days"),
        ("eu countries", "outside the eu", "international", "abroad"),
    ),
    Intent(
        "gift_cards", "gift_cards",
        ("How long is a gift card valid? I got one from {name}.",
         "Does my gift card expire? I want to buy a {product} with it.",
         "{name} here: can I use a gift card I received last spring?",
         "Can I swap a gift card for cash? Thanks, {name}",
         "Is there an expiry date on your vouchers? I'm eyeing a {product}.",
         "I found an old Northwind Home gift card from {name}. Is it still good?",
         "Can I pay for a {product} with a gift card, and until when?"),
        "Gift cards are valid for 12 months from the date of purchase and can be spent on any order in our online "
        "shop. They cannot be paid out in cash.",
        ("12 months", "date of purchase"),
        ("gift card", "voucher"),
    ),
    Intent(
        "price_match", "price_match",
        ("I saw the {product} cheaper somewhere else. Will you match the price?",
         "Do you price match? Another shop sells the {product} for less.",
         "Hi, {name} here. I bought a {product} last week and now it's cheaper at another shop.",
         "Can I get money back if I find a lower price for my {product}?",
         "Does Northwind Home beat competitors' prices on a {product}?",
         "Another store has the same {product} on sale. Can you refund the difference?",
         "{name} asking: is there a price guarantee if the {product} drops in price elsewhere?"),
        "If you find the same item cheaper at another Dutch shop within 14 days of your purchase, send us the link "
        "and we will pay you the difference.",
        ("14 days", "difference"),
        ("cheaper", "price match", "difference"),
    ),
    Intent(
        "loyalty_points", "loyalty",
        ("How does your loyalty programme work? {name}",
         "How many points do I get if I buy a {product}?",
         "What are my Northwind Club points worth? {name} here.",
         "Do I earn rewards on order {order}?",
         "Hi, {name}. How do I turn my points into a discount?",
         "Is there a points scheme for regular customers like me? I just bought a {product}.",
         "I have saved up points on my account, {name} here. How much money are they worth?"),
        "As a member of Northwind Club you earn 1 point for every euro you spend, and 100 points are worth €5 off a "
        "later order.",
        ("1 point", "100 points", "€5"),
        ("point", "northwind club"),
    ),
    Intent(
        "payment_methods", "payment",
        ("Which payment methods do you accept? {name}",
         "Can I pay for the {product} with PayPal?",
         "Do you take credit cards? I'd like to order a {product}.",
         "Hi, {name} here. Is bank transfer possible?",
         "How can I pay for order {order}?",
         "I don't have a credit card. Is there another way to pay for a {product}?",
         "{name} asking: can I pay by Mastercard or do I need something else?"),
        "We accept credit and debit cards (Visa and Mastercard), PayPal and bank transfer. Orders paid by bank "
        "transfer ship once the payment arrives, usually within 2 business days.",
        ("card", "PayPal", "bank transfer"),
        ("paypal", "bank transfer", "we accept"),
    ),
    Intent(
        "exchange_item", "exchanges",
        ("Can I exchange the {product} for a different colour?",
         "The {product} is the wrong size. Can I swap it?",
         "Hi, {name} here. I'd rather have the {product} in grey; is that possible?",
         "How do I change my {product} for another size?",
         "I'd like the same {product} but in blue instead of white.",
         "Do you do exchanges? My {product} is too small.",
         "Could I trade the {product} I received for the bigger version?"),
        "Yes, you can exchange the {product} for another size or colour, free of charge, within 30 days of delivery. "
        "Request it under My orders and we send the new one once the original is on its way back.",
        ("{product}", "size", "colour", "free", "30 days"),
        ("exchange", "swap", "another size"),
    ),
    Intent(
        "assembly_service", "assembly",
        ("Can you assemble the {furniture} for me?",
         "Do you offer help putting together a {furniture}?",
         "How much does it cost to have the {furniture} built at my home?",
         "Hi, {name} here. I'm no good at DIY; can someone set up my {furniture}?",
         "Is there an installation service for the {furniture}?",
         "{name} asking: will your delivery people put the {furniture} together?",
         "What does your fitting service charge for a {furniture}?"),
        "Our assembly service costs €29 per item: a fitter puts the furniture together in your home and takes the "
        "packaging away. You can book it at checkout.",
        ("€29", "checkout"),
        ("assembly", "assemble", "fitter"),
    ),
    Intent(
        "change_address", "address",
        ("I need to change the delivery address for order {order}.",
         "Can I send order {order} to my office instead?",
         "Hi, {name} here. I typed the wrong street for {order}; can you fix it?",
         "I'm moving house. Can order {order} go to my new address?",
         "How do I update where {order} is delivered?",
         "Order {order} is going to my old flat. Can you redirect it?",
         "Is it too late to change the shipping address on {order}?"),
        "You can change the delivery address of order {order} under My orders until it leaves our warehouse. If it "
        "has already shipped, contact customer service and we will ask the carrier to redirect it.",
        ("{order}", "My orders", "leaves our warehouse", "redirect"),
        ("address", "redirect"),
    ),
)  # fmt: skip

KB_ONLY_INTENTS: tuple[str, ...] = ("gift_cards", "price_match", "loyalty_points", "assembly_service")

SPLITS = ("train", "test", "kb_only")

_INTENTS = {i.name: i for i in INTENTS}
_PASSAGES = {p.id: p for p in KNOWLEDGE_BASE}
# A template with few slot values can run out of distinct questions; after this many draws a repeat is accepted.
_MAX_REDRAWS = 50


def intent(name: str) -> Intent:
    """The :class:`Intent` called ``name``; an unknown name raises ValueError listing the known ones.

    Taught in chapter 09, section 5.
    """
    if name not in _INTENTS:
        raise ValueError(f"unknown intent {name!r}; the intents are: {', '.join(_INTENTS)}.")
    return _INTENTS[name]


def passage(passage_id: str) -> Passage:
    """The knowledge-base :class:`Passage` with id ``passage_id``; an unknown id raises ValueError listing the known ones.

    Taught in chapter 09, section 6.
    """
    if passage_id not in _PASSAGES:
        raise ValueError(f"unknown passage {passage_id!r}; the passages are: {', '.join(_PASSAGES)}.")
    return _PASSAGES[passage_id]


def _draw(rng: random.Random) -> dict[str, str]:
    # Every slot is drawn for every example, used or not, so that a template's draws do not depend on which slots it has.
    values = {"order": f"{ORDER_PREFIX}{rng.randrange(10000, 100000)}"}
    for slot, choices in SLOT_VALUES.items():
        values[slot] = rng.choice(choices)
    return values


def _split_templates(it: Intent, split: str) -> range:
    n = len(it.templates)
    if split == "kb_only":
        return range(n) if it.name in KB_ONLY_INTENTS else range(0)
    if it.name in KB_ONLY_INTENTS:
        return range(0)
    return range(n - N_TEST_TEMPLATES) if split == "train" else range(n - N_TEST_TEMPLATES, n)


def examples(split: str, per_template: int = 4, seed: int = 0) -> list[Example]:
    """The examples of ``split``: ``"train"`` (the first templates of every trained intent), ``"test"`` (their last
    :data:`N_TEST_TEMPLATES` templates, phrasings never seen in training) or ``"kb_only"`` (every template of the
    :data:`KB_ONLY_INTENTS`).

    Each template gives ``per_template`` examples whose slot values are drawn by
    ``random.Random(f"{seed}-{split}-{intent}-{template}")``, never the global random state, so the result is the same
    on every call and machine; a template's questions are distinct while its slots allow. Ordered by intent, then
    template, then draw. Taught in chapter 09, section 5.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(repr(s) for s in SPLITS)}, got {split!r}.")
    if isinstance(per_template, bool) or not isinstance(per_template, int) or per_template < 1:
        raise ValueError(f"per_template must be a positive integer (examples per template), got {per_template!r}.")
    out = []
    for it in INTENTS:
        for t in _split_templates(it, split):
            template = it.templates[t]
            rng = random.Random(f"{seed}-{split}-{it.name}-{t}")
            seen = set()
            for _ in range(per_template):
                for _attempt in range(_MAX_REDRAWS):
                    values = _draw(rng)
                    question = template.format(**values)
                    if question not in seen:
                        break
                seen.add(question)
                facts = tuple(f.format(**values) for f in it.facts)
                out.append(Example(it.name, t, question, it.answer.format(**values), facts, it.passage_id))
    return out


def messages(
    example: Example, context: Sequence[Passage] = (), system: str = SYSTEM_PROMPT, with_answer: bool = True
) -> list[dict]:
    """The chat messages of ``example``: the ``system`` prompt, the user's question and (``with_answer``) the
    reference answer, as ``[{"role": ..., "content": ...}, ...]`` for a chat template.

    With ``context`` (retrieved passages, section 6) the user turn reads ``"Policy:\\n- <text>\\n- ...\\n\\nQuestion:
    <question>"``; without it, just the question. Pass ``with_answer=False`` for the prompt to generate from.
    Taught in chapter 09, section 5.
    """
    if not isinstance(example, Example):
        raise TypeError(f"messages expects an Example (from examples()), got {type(example).__name__}.")
    if isinstance(context, (Passage, str)) or not all(isinstance(p, Passage) for p in context):
        raise TypeError("context must be a sequence of Passage (for one passage, wrap it in a list).")
    user = example.question
    if context:
        user = "Policy:\n" + "\n".join(f"- {p.text}" for p in context) + f"\n\nQuestion: {example.question}"
    out = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    if with_answer:
        out.append({"role": "assistant", "content": example.answer})
    return out


@dataclass(frozen=True)
class Verdict:
    """What :func:`check_answer` found: ``intent_ok`` (a marker of the intent is there), ``facts_ok`` (every fact is
    there and no wrong value is stated), the ``missing`` facts and the ``wrong`` values, as normalised text.

    Taught in chapter 09, section 5.
    """

    intent_ok: bool
    facts_ok: bool
    missing: tuple[str, ...]
    wrong: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """The answer addresses the intent and states its facts right. Taught in chapter 09, section 5."""
        return self.intent_ok and self.facts_ok


# Normalisation: what a model may write differently without being wrong.
_CHARS = str.maketrans({c: "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2212"} | {"\u2018": "'", "\u2019": "'"})
_AMOUNT = r"\d+(?:[.,]\d{1,2})?(?!\d)"
_EURO_WORD = r"\beur(?:os?)?\b"
_EURO = re.compile(rf"(?:€|{_EURO_WORD})\s*({_AMOUNT})|(?<![\w.,])({_AMOUNT})\s*(?:€|{_EURO_WORD})")
_NUMBER_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
    "eleven": 11, "twelve": 12, "fourteen": 14, "fifteen": 15, "twenty-four": 24, "twenty": 20, "thirty": 30,
    "forty-eight": 48, "sixty": 60,
}  # fmt: skip
_NUMBER_WORD = re.compile(r"\b(" + "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True)) + r")\b")
_RANGE = re.compile(r"(?<![\w.,:])(?:between )?(\d+)\s*(?:-|to|and)\s*(\d+)(?!\d)")
_UNITS = "business day|day|hour|week|month|year|point|minute"
# The lookbehind keeps the digits of an order number ("NW-48213") or of a range's second end from starting a match.
_UNIT = re.compile(rf"(?<![\w.,:€-])(\d+(?:-\d+)?)[\s-]*({_UNITS})s?\b")
_STATED = re.compile(rf"(?<![\w.,:€-])(\d+)(?:-(\d+))? ({_UNITS})s?\b")
_EURO_STATED = re.compile(r"€(\d+(?:\.\d\d)?)(?!\d)")


def _euro(match: re.Match) -> str:
    value = Decimal((match.group(1) or match.group(2)).replace(",", "."))
    return f"€{int(value)}" if value == value.to_integral_value() else f"€{value:.2f}"


def _range(match: re.Match) -> str:
    # "between 3 and 5" is a range; a bare "3 and 5" may be a list, so "and" only counts after "between".
    if " and " in match.group(0) and not match.group(0).startswith("between"):
        return match.group(0)
    return f"{match.group(1)}-{match.group(2)}"


def _unit(match: re.Match) -> str:
    number, unit = match.group(1), match.group(2)
    return f"{number} {unit}" + ("" if number == "1" else "s")


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).translate(_CHARS).lower()
    text = " ".join(text.split())
    text = _EURO.sub(_euro, text)
    text = re.sub(r"(?<![\d:])0(\d:\d\d)", r"\1", text)
    # A time range's end is a fact of its own ("18:00"), so it must not read as the tail of "9:00-18:00".
    text = re.sub(r"(\d:\d\d) ?(?:-|to) ?(\d{1,2}:\d\d)", r"\1 to \2", text)
    text = text.replace("working day", "business day")
    text = _NUMBER_WORD.sub(lambda m: str(_NUMBER_WORDS[m.group(1)]), text)
    text = _RANGE.sub(_range, text)
    return _UNIT.sub(_unit, text)


def _contains(text: str, fact: str) -> bool:
    """Whether normalised ``fact`` stands in normalised ``text`` as a whole: "5 business days" is not found in "3-5
    business days", nor "€60" in "€60.50", but "card" is found in "cards"."""
    start = r"(?<![\w.,:-])" if fact[0].isdigit() else r"(?<!\w)" if fact[0].isalnum() else ""
    end = r"(?![\d])(?![.,:]\d)" if fact[-1].isdigit() else r"(?:e?s)?(?!\w)" if fact[-1].isalnum() else ""
    return re.search(start + re.escape(fact) + end, text) is not None


def _stated(text: str) -> list[tuple[str, set[str], str]]:
    """Every ``(kind, numbers, as written)`` of a normalised text: "3-5 business days" -> ("business day", {"3", "5"})."""
    out = [(m.group(3), {m.group(1), m.group(2)} - {None}, m.group(0)) for m in _STATED.finditer(text)]
    return out + [("€", {m.group(1)}, m.group(0)) for m in _EURO_STATED.finditer(text)]


def _kind(fact: str) -> str | None:
    if m := _STATED.fullmatch(fact):
        return m.group(3)
    return "€" if _EURO_STATED.fullmatch(fact) else None


def check_answer(example: Example, answer: str) -> Verdict:
    """Score a generated ``answer`` to ``example``, deterministically, case-insensitively, after normalising unicode
    (NFKC), whitespace, dashes, euro amounts ("€4.90", "4.90 €", "EUR 4.90" and "4,90 €" alike), number words and
    units ("two-year" is "2 years").

    ``intent_ok``: the answer contains one of the intent's markers (as a word or the start of one). ``facts_ok``: every
    fact of the example is there (those that are not are in ``missing``) and, for each fact that is a number with a
    unit (days, business days, hours, months, years, points, euros), every number the answer states with that unit is
    one the intent's passage contains; any other is in ``wrong`` ("14 days" where the policy says "30 days"). An empty
    answer is simply not ok. Taught in chapter 09, section 5.
    """
    if not isinstance(example, Example):
        raise TypeError(f"check_answer expects an Example (from examples()), got {type(example).__name__}.")
    if not isinstance(answer, str):
        raise TypeError(f"answer must be a str, got {type(answer).__name__}.")
    text = _normalise(answer)
    markers = intent(example.intent).markers
    intent_ok = any(re.search(r"(?<!\w)" + re.escape(_normalise(m)), text) for m in markers)
    missing = tuple(f for f in example.facts if not _contains(text, _normalise(f)))
    kinds = {_kind(_normalise(f)) for f in example.facts} - {None}
    allowed: dict[str, set[str]] = {}
    for kind, numbers, _ in _stated(_normalise(passage(example.passage_id).text)):
        allowed.setdefault(kind, set()).update(numbers)
    wrong = []
    for kind, numbers, written in _stated(text):
        if kind in kinds and not numbers <= allowed.get(kind, set()) and written not in wrong:
            wrong.append(written)
    return Verdict(intent_ok, not missing and not wrong, missing, tuple(wrong))
