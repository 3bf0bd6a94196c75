"""The top of the stack: the `das` command line (`das.cli`), the service's composition root
(`das.app`) and the demo's corpora (`das.demo`). Nothing below imports this package."""
