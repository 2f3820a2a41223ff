"""A small synthetic sentence-pair set for SMOKE TESTS -- not a benchmark.

Its only purpose: let the embedded default model and the tests run end to end on data
whose labels are learnable in a couple of epochs. Numbers measured on it say nothing
about real tasks; use the real corpora (BQ, LCQMC, MRPC...) for that.

Each pair is two customer questions (banking, cards, limits, accounts, security,
shopping, returns, travel, repayments). A question means an (action, object, modifier)
triple, and each part has several synonymous wordings; frames vary the word order
("How do I reset my password?" / "What is the way to change my password?").
label 1: same triple, worded independently. label 0: mostly HARD negatives, which change
exactly one part (open vs close an account, before vs after shipping, cancel vs confirm,
Paris vs Rome), plus some pairs from different topics. Both sentences of every pair come
from the same frame distribution, so the label depends on the content words, not on
length or overlap. Deterministic: same arguments -> byte-identical files.

CLI: ``python -m data.sample --out DIR [--lang en|zh|mixed] [--n-train N] [--seed S] [--columns a,b,label]``
(``--columns question,candidate,is_same``: a file shaped like a user's own CSV, as in the README's quick start)
"""
from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

__all__ = ["make_sample", "LANGS"]

LANGS = ("en", "zh", "mixed")
_EASY_NEGATIVES = 0.15  # share of negatives taken from another topic

# A family: actions / objects / mods are lists of meanings, each a list of wordings.
# A verb wording holds "{o}" for the object ("set {o} up"); "=..." in Chinese is a whole
# verb phrase that already contains the object (开户). "mod_at": the modifier follows the
# verb phrase ("vp") or belongs to the object phrase ("obj").
_EN = [
    dict(actions=[["open {o}", "set {o} up", "create {o}", "start {o}"],
                  ["close {o}", "shut {o} down", "terminate {o}", "cancel {o}"]],
         objects=[["savings account"], ["checking account", "current account"],
                  ["joint account", "shared account"], ["business account"]]),
    dict(actions=[["activate {o}", "turn {o} on", "enable {o}"],
                  ["block {o}", "freeze {o}", "lock {o}"]],
         objects=[["credit card"], ["debit card", "bank card"], ["virtual card"]]),
    dict(actions=[["raise {o}", "increase {o}", "bump {o} up"],
                  ["lower {o}", "reduce {o}", "decrease {o}"]],
         objects=[["daily transfer limit", "limit for daily transfers"],
                  ["credit limit", "credit line"],
                  ["ATM withdrawal limit", "cash withdrawal limit"]]),
    dict(actions=[["reset {o}", "change {o}", "update {o}", "modify {o}"]],
         objects=[["password", "login password"], ["PIN", "PIN code"],
                  ["email address", "e-mail address"], ["phone number", "mobile number"]]),
    dict(actions=[["enable {o}", "turn {o} on", "switch {o} on", "activate {o}"],
                  ["disable {o}", "turn {o} off", "switch {o} off", "deactivate {o}"]],
         objects=[["two-factor authentication", "2FA", "two-step verification"],
                  ["login alerts", "sign-in notifications"],
                  ["fingerprint login", "Touch ID login"]]),
    dict(actions=[["cancel {o}", "call {o} off", "back out of {o}"],
                  ["confirm {o}", "approve {o}", "finalize {o}"],
                  ["track {o}", "check the status of {o}", "follow {o}"]],
         objects=[["order", "purchase"], ["pre-order", "preorder"]],
         mods=[None, ["before it ships", "before it is shipped", "prior to shipping"],
               ["after it ships", "after it has been shipped", "once it has shipped"]],
         mod_at="vp"),
    dict(actions=[["return {o}", "send {o} back", "give {o} back"],
                  ["exchange {o}", "get {o} exchanged", "swap {o} for another one"]],
         objects=[["jacket", "coat"], ["laptop", "notebook computer"],
                  ["phone", "smartphone"], ["watch", "wristwatch"]]),
    dict(actions=[["book {o}", "reserve {o}"], ["cancel {o}", "call {o} off"],
                  ["reschedule {o}", "change the date of {o}"]],
         objects=[[w.format(c=c) for w in kind]
                  for kind in (["flight to {c}", "plane ticket to {c}"],
                               ["train ticket to {c}", "rail ticket to {c}"],
                               ["hotel room in {c}", "hotel in {c}"])
                  for c in ("Paris", "Rome", "Berlin", "London", "Tokyo", "Madrid")],
         mods=[None, ["for tomorrow", "for tomorrow morning"],
               ["for next week", "for the coming week"]],
         mod_at="obj"),
    dict(actions=[["pay {o}", "settle {o}", "pay off {o}"]],
         objects=[["credit card bill", "card statement"], ["loan installment", "loan payment"],
                  ["phone bill", "mobile bill"]],
         mods=[None, ["before the due date", "ahead of the due date", "early"],
               ["after the due date", "past the due date", "late"]],
         mod_at="vp"),
]
_EN_FRAMES = ["How do I {vp}?", "How can I {vp}?", "What is the way to {vp}?",
              "What are the steps to {vp}?", "Can you tell me how to {vp}?",
              "Is it possible to {vp}?", "I want to {vp}. What should I do?",
              "I need to {vp}, please help.", "Please explain how to {vp}.",
              "Where can I {vp}?", "Could you help me {vp}?", "Any advice on how to {vp}?"]
# Object first, then "it": word-order changes.
_EN_FRONTED = ["My {obj}: how do I {vp}?", "About my {obj} - can I {vp}?",
               "Regarding my {obj}, how can I {vp}?", "I have a question about my {obj}. How to {vp}?"]

_ZH = [
    dict(actions=[["开立{o}", "开设{o}", "=开户", "=办理开户"],
                  ["注销{o}", "关闭{o}", "=销户", "=办理销户"]],
         objects=[["账户", "银行账户", "储蓄账户"]]),
    dict(actions=[["激活{o}", "开通{o}", "启用{o}"], ["冻结{o}", "挂失{o}", "锁定{o}"]],
         objects=[["信用卡"], ["借记卡", "储蓄卡"], ["虚拟卡"]]),
    dict(actions=[["提高{o}", "提升{o}", "上调{o}", "调高{o}"],
                  ["降低{o}", "下调{o}", "调低{o}", "减少{o}"]],
         objects=[["信用额度", "信用卡额度"], ["转账限额", "每日转账额度"],
                  ["借款额度", "贷款额度"]]),
    dict(actions=[["修改{o}", "更改{o}", "重置{o}", "更换{o}"]],
         objects=[["密码", "登录密码"], ["支付密码", "付款密码"],
                  ["手机号", "手机号码", "绑定的手机号"], ["邮箱", "电子邮箱", "邮箱地址"]]),
    dict(actions=[["开启{o}", "打开{o}", "启用{o}"], ["关闭{o}", "停用{o}", "取消{o}"]],
         objects=[["指纹登录", "指纹解锁"], ["短信通知", "短信提醒"], ["双重验证", "两步验证"]]),
    dict(actions=[["取消{o}", "撤销{o}"], ["确认{o}", "确定{o}"], ["查询{o}物流", "跟踪{o}"]],
         objects=[["订单", "购物订单"], ["预售订单", "预购订单"]],
         mods=[None, ["发货前", "发货之前", "在发货以前"], ["发货后", "发货之后", "在发货以后"]],
         mod_at="vp"),
    dict(actions=[["退{o}", "退掉{o}", "退回{o}"], ["换{o}", "调换{o}", "更换{o}"]],
         objects=[["衣服", "外套"], ["手机"], ["电脑", "笔记本电脑"], ["手表"]]),
    dict(actions=[["预订{o}", "订{o}", "预定{o}"], ["取消{o}", "退订{o}", "退掉{o}"],
                  ["改签{o}", "更改{o}日期"]],
         objects=[[w.format(c=c) for w in kind]
                  for kind in (["去{c}的机票", "飞{c}的航班"], ["去{c}的火车票", "到{c}的高铁票"],
                               ["{c}的酒店", "{c}的宾馆"])
                  for c in ("北京", "上海", "广州", "成都", "杭州", "西安")],
         mods=[None, ["明天", "明日"], ["下周", "下个星期"]], mod_at="obj"),
    dict(actions=[["还{o}", "偿还{o}", "归还{o}"]],
         objects=[["信用卡账单", "信用卡欠款"], ["贷款", "借款"], ["话费", "手机话费"]],
         mods=[None, ["提前", "在到期日之前", "到期前"], ["逾期", "到期后", "过了还款日"]],
         mod_at="vp"),
]
_ZH_FRAMES = ["如何{vp}？", "怎么{vp}", "请问怎样{vp}？", "我想{vp}，该怎么操作？", "{vp}的方法是什么？",
              "在哪里可以{vp}？", "能帮我{vp}吗", "{vp}要怎么办理", "想{vp}，需要哪些步骤？",
              "怎样才能{vp}？", "{vp}怎么弄"]
_ZH_FRONTED = ["我的{obj}，怎么{vp}？", "{obj}如何{vp}？", "关于{obj}，我想{vp}，怎么做？"]


def _meaning(rng, fam):
    mods = fam.get("mods", [None])
    return (rng.randrange(len(fam["actions"])), rng.randrange(len(fam["objects"])),
            rng.randrange(len(mods)))


def _contrast(rng, fam, m):
    """Change exactly one part of meaning m (a hard negative)."""
    mods = fam.get("mods", [None])
    slots = [i for i, n in enumerate((len(fam["actions"]), len(fam["objects"]))) if n > 1]
    if mods[m[2]] is not None:  # "with" vs "without" a modifier is no clear difference
        slots.append(2)
    slot = rng.choice(slots)
    n = (len(fam["actions"]), len(fam["objects"]), len(mods))[slot]
    choices = [i for i in range(n) if i != m[slot] and (slot != 2 or mods[i] is not None)]
    m = list(m)
    m[slot] = rng.choice(choices)
    return tuple(m)


def _realize(rng, fam, m, zh):
    verb = rng.choice(fam["actions"][m[0]])
    obj = rng.choice(fam["objects"][m[1]])
    mod = fam.get("mods", [None])[m[2]]
    mod = rng.choice(mod) if mod else ""
    if mod and fam.get("mod_at") == "obj":
        obj = f"{mod}{obj}" if zh else f"{obj} {mod}"
        mod = ""
    fronted = rng.random() < 0.25 and not verb.startswith("=")
    if zh:
        vp = verb[1:] if verb.startswith("=") else verb.format(o="" if fronted else obj)
        vp = mod + vp
        frame = rng.choice(_ZH_FRONTED if fronted else _ZH_FRAMES)
    else:
        o = "it" if fronted else f"{rng.choice(('my', 'my', 'the'))} {obj}"
        vp = verb.format(o=o) + (f" {mod}" if mod else "")
        frame = rng.choice(_EN_FRONTED if fronted else _EN_FRAMES)
    return frame.format(vp=vp, obj=obj)


def _pair(rng, lang, label, easy=_EASY_NEGATIVES):
    zh = lang == "zh" or (lang == "mixed" and rng.random() < 0.5)
    fams = _ZH if zh else _EN
    fam = rng.choice(fams)
    m = _meaning(rng, fam)
    fam2, m2 = fam, m
    if not label:
        if rng.random() < easy:
            fam2 = rng.choice([f for f in fams if f is not fam])
            m2 = _meaning(rng, fam2)
        else:
            m2 = _contrast(rng, fam, m)
    a = _realize(rng, fam, m, zh)
    for _ in range(20):  # a positive pair should not be two identical strings
        b = _realize(rng, fam2, m2, zh)
        if b != a:
            break
    return (a, b) if rng.random() < 0.5 else (b, a)


def _split(n, lang, rng, seen, easy=_EASY_NEGATIVES):
    labels = [1] * (n // 2) + [0] * (n - n // 2)
    rng.shuffle(labels)
    rows = []
    for label in labels:
        for _ in range(50):  # keep valid/test pairs out of train
            a, b = _pair(rng, lang, label, easy)
            if (a, b) not in seen and (b, a) not in seen:
                break
        seen.add((a, b))
        rows.append((a, b, label))
    return rows


COLUMNS = ("sentence1", "sentence2", "label")


def make_sample(out_dir, n_train=2000, n_valid=300, n_test=300, lang="en", seed=0, columns=COLUMNS,
                easy_negatives=_EASY_NEGATIVES):
    """Write train.csv, valid.csv, test.csv (header `columns`, sentence1,sentence2,label by default;
    label 1 = same meaning) into out_dir; returns {"train": path, "valid": path, "test": path}.
    `easy_negatives`: the share of negatives from another topic (the rest change one word).
    SMOKE-TEST data only (see the module docstring)."""
    if len(columns) != 3 or len(set(columns)) != 3:
        raise ValueError(f"columns must be three distinct names (text a, text b, label), not {columns!r}")
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}, not {lang!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seen, paths = set(), {}
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        # One generator per split (string seeds hash with sha512: stable across runs), so
        # changing n_train does not change valid/test beyond the overlap filter.
        rng = random.Random(f"sample-{lang}-{seed}-{split}")
        rows = _split(n, lang, rng, seen, easy_negatives)
        paths[split] = out / f"{split}.csv"
        with open(paths[split], "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(list(columns))
            w.writerows(rows)
    return paths


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m data.sample",
                                description="Write a synthetic smoke-test pair set (not a benchmark).")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--lang", default="en", choices=LANGS)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-valid", type=int, default=300)
    p.add_argument("--n-test", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--columns", default=",".join(COLUMNS), help="header: text a, text b and label column names")
    a = p.parse_args(argv)
    columns = tuple(c.strip() for c in a.columns.split(","))
    for split, path in make_sample(a.out, a.n_train, a.n_valid, a.n_test, a.lang, a.seed, columns).items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
