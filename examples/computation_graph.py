"""The computation graph of e = (a + b) * (b + 1), after seed 004, on fusegrad.

c = a + b and d = b + 1 feed e = c * d. By the chain rule, de/da = de/dc * dc/da = d, and b
reaches e along two paths, so de/db = de/dc * dc/db + de/dd * dd/db = d + c. One reverse
(backward) sweep from e gives the derivative for every input at once.
"""

import fusegrad as torch

a = torch.tensor(2.0, requires_grad=True)
b = torch.tensor(1.0, requires_grad=True)

c = a + b
d = b + 1
e = c * d
c.retain_grad()
d.retain_grad()
print(c, d, e)

e.backward()
print("de/dc =", c.grad)  # d = 2
print("de/dd =", d.grad)  # c = 3
print("de/da =", a.grad)  # d = 2
print("de/db =", b.grad)  # d + c = 5
