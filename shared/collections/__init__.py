"""Collection storage's one home: the collection hash's fields and their parser (`header`), the
Lua of multi-key updates (`lua`) behind script objects that build their own KEYS (`scripts`), and
every read and write written once as sans-I/O operations (`ops`) that the API and the workers run
on their own clients (`shared.runner`). Keys are named in `shared.keys`.
"""

from shared.collections.header import CollectionHeader
from shared.collections.scripts import SCRIPTS

__all__ = ["SCRIPTS", "CollectionHeader"]
