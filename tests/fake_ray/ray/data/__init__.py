class Dataset:
    def __init__(self, rows):
        self.rows = list(rows)

    def take_all(self):
        return list(self.rows)


def from_items(rows):
    return Dataset(rows)
