"""Unaligned faces (upstream's `unaligned_face` task): find the faces in a whole photo, restore each one
aligned to the FFHQ template with the face task, the rest with the sr task, and blend the faces back.

`detection` finds faces with five landmarks (facexlib's RetinaFace), `alignment` warps them to and from the
512 template, `parsing` draws the face-region masks (facexlib's ParseNet), `blending` pastes restored faces
back with soft masks, and `unaligned` runs the whole task on a pipeline. Only `model.pipeline` imports this
package, and only when the task is loaded: facexlib and OpenCV stay out of every other process.
"""
