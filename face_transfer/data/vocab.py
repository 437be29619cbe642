"""The label vocabularies shared by the synthetic faces, the dataset readers and alignment.
One definition each: the order is the label value (expression 0 is "neutral"), so every module imports it from here.
"""
# The package's expression order: synthetic faces, the task registry and FER2013's mapped labels use it.
EXPRESSIONS = ("neutral", "happy", "sad", "surprise", "angry", "disgust", "fear")
# Five landmarks as (x, y) pixels; "left" is the image's left (the person's right eye), as MTCNN reports it.
LANDMARK_NAMES = ("left_eye", "right_eye", "nose_tip", "mouth_left", "mouth_right")
