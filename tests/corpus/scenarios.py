"""Small notebook scenarios for the kernel state corpus: name -> (files to create, cells).

`expect_lost` names variables that must be reported lost (they cannot move); everything
else must come back equal.
"""

# ruff: noqa: E501 -- cell sources read best one notebook line per source line

from __future__ import annotations

SCENARIOS: dict[str, dict] = {
    "numpy": {
        "cells": [
            "import numpy as np",
            "a = np.arange(24, dtype=np.int32).reshape(4, 6)\nb = a[:, 2]\nf = np.linspace(0, 1, 7)",
            "a[0, 0] = 99\nm = np.ma.masked_array([1, 2, 3], mask=[0, 1, 0])\nt = a.T",
        ]
    },
    "pandas": {
        "cells": [
            "import pandas as pd\nimport numpy as np",
            "df = pd.DataFrame({'k': list('abcab'), 'v': np.arange(5.0)})\n"
            "df['when'] = pd.date_range('2026-01-01', periods=5)",
            "g = df.groupby('k')['v'].sum()\ns = df['v'] * 2\ncat = df['k'].astype('category')",
        ]
    },
    "random_state": {
        "cells": [
            "import random\nrandom.seed(1)\nfirst = random.random()",
            "import numpy as np\nnp.random.seed(2)\nx = np.random.rand(3)",
            "rng = np.random.default_rng(3)\ny = rng.random()\nr = random.Random(4)\nr.random()",
        ]
    },
    "classes_closures": {
        "cells": [
            "class Animal:\n    def __init__(self, name):\n        self.name = name\n"
            "    def speak(self):\n        return self.name + '!'\n"
            "class Dog(Animal):\n    def speak(self):\n        return 'woof ' + super().speak()",
            "d = Dog('rex')\npets = [d, Animal('tom')]",
            "def make_adder(n):\n    def add(x):\n        return x + n\n    return add\nadd3 = make_adder(3)",
            "import functools\ndef deco(f):\n    @functools.wraps(f)\n    def w(*a):\n        return f(*a) * 2\n"
            "    return w\n@deco\ndef twice(x):\n    return x",
        ]
    },
    "lambdas": {
        "cells": [
            "ops = {'inc': lambda x: x + 1, 'neg': lambda x: -x}\nkey = lambda p: p[1]",
            "import functools\npairs = sorted([(1, 'b'), (2, 'a')], key=key)\n"
            "p2 = functools.partial(pow, 2)\nfrom collections import defaultdict\n"
            "dd = defaultdict(lambda: 'missing')\ndd['x'] = 'y'",
        ]
    },
    "generators": {
        "cells": [
            "squares = (i * i for i in range(10))",
            "next(squares)\nnext(squares)",
            "def fib():\n    a, b = 0, 1\n    while True:\n        yield a\n        a, b = b, a + b\n"
            "fg = fib()",
            "head = [next(fg) for _ in range(5)]",
            "import itertools\ncounter = itertools.count(10)\nnext(counter)\nz = zip('ab', [1, 2])",
        ]
    },
    "open_files": {
        "files": {"data.txt": "one\ntwo\nthree\n"},
        "cells": [
            "rd = open('data.txt')\nrd.readline()",
            "log = open('log.txt', 'a')\nlog.write('start\\n')",
            "with open('result.txt', 'w') as w:\n    w.write('done')\nclosed = w",
        ],
    },
    "sqlite": {
        "cells": [
            "import sqlite3\ndb = sqlite3.connect('store.db')\n"
            "db.execute('create table if not exists kv(k, v)')",
            "db.executemany('insert into kv values (?, ?)', [('a', 1), ('b', 2)])\ndb.commit()",
            "mem = sqlite3.connect(':memory:')\nmem.execute('create table t(x)')",
            "mem.execute('insert into t values (7)')\nrows = db.execute('select * from kv').fetchall()",
        ]
    },
    "matplotlib": {
        "cells": [
            "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt",
            "fig, ax = plt.subplots()\nax.plot([1, 2, 3], [4, 5, 6])\nax.set_title('t')",
        ]
    },
    "module_aliases": {
        "cells": [
            "import numpy as np, os.path as osp\nfrom collections import OrderedDict as OD",
            "from math import *\nfrom os import path as p\nimport json as j",
            "od = OD(a=1)\nroot = sqrt(16)\nenc = j.dumps({'x': pi})",
        ]
    },
    "large_dict": {
        "cells": [
            "records = {i: (i, str(i), i / 3) for i in range(100_000)}",
            "from dataclasses import dataclass\n@dataclass\nclass Item:\n    n: int\n    tag: str\n"
            "items = [Item(i, 't%d' % (i % 7)) for i in range(20_000)]",
        ]
    },
    "stdlib_values": {
        "cells": [
            "import datetime, decimal, fractions, pathlib, re, enum\n"
            "when = datetime.datetime(2026, 11, 22, 1, 2, 3)\ndec = decimal.Decimal('1.10')\n"
            "frac = fractions.Fraction(1, 3)\npth = pathlib.Path('/tmp/x')\npat = re.compile('a+b')",
            "class Color(enum.Enum):\n    RED = 1\nfav = Color.RED\nfrom collections import namedtuple\n"
            "P = namedtuple('P', 'x y')\npt = P(1, 2)\nbs = b'\\x00\\x01'\nst = {1, 2}\nc = 1 + 2j",
            "import threading\nlock = threading.Lock()\nev = threading.Event()",
        ]
    },
    "shared_refs": {
        "cells": [
            "base = [1, 2]\nholder = {'x': base}\nsame = base",
            "base.append(3)\nclass Node:\n    pass\nn1 = Node()\nn2 = Node()\nn1.peer = n2\nn2.peer = n1",
        ]
    },
    "changed_inputs": {
        "cells": [
            "k = 2",
            "g = (i * k for i in range(5))\nnext(g)",
            "k = 3\nscale = [k] * 2",
        ]
    },
    "cannot_move": {
        "cells": [
            "import socket\nsock = socket.socket()",
            "exec('ghost = (i for i in range(3))')\nfine = 'ok'",
        ],
        "expect_lost": ["sock", "ghost"],
    },
}
