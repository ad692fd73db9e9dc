#!/bin/bash
# Rename DIR/*.FROM to DIR/*.TO. See the task statement.
exit 1
